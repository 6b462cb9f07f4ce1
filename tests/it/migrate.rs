//! Switching from a real Dovecot (and from Courier's and qpopper's files)
//! to mailbag on the same Maildirs and the same passwd-file: clients that
//! leave mail on the server (poplib, fetchmail --keep) see the same UIDLs,
//! download nothing again, and a UIDL mailbag has shown stays as it was
//! after Dovecot's IMAP side indexes the Maildir.
//!
//! One Dovecot (Debian's dovecot-pop3d and dovecot-imapd, on a private
//! configuration in a temp dir, on loopback) serves every test of this
//! file while any of them runs; a watchdog stops it if the test process
//! dies first.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use mailbag::auth::passwd_file::PasswdFile;
use mailbag::config::Config;
use mailbag::server::Server;
use mailbag::store::maildir::MaildirStore;
use tokio_util::sync::CancellationToken;

use crate::support::free_port;

const MESSAGES: usize = 20;
const PASSWORD: &str = "migrate-pw";
const USERS: [&str; 3] = ["dove", "qpop", "cour"];

/// The shared Dovecot: its data dir (Maildirs under `mail/<user>`, the
/// passwd-file) and its POP3 and IMAP addresses.
struct Dovecot {
    data: tempfile::TempDir,
    pop3: SocketAddr,
    imap: SocketAddr,
    watchdog: std::process::Child,
}

impl Drop for Dovecot {
    fn drop(&mut self) {
        // The watchdog's shell stops Dovecot when its stdin closes (as
        // it also does when this process dies).
        drop(self.watchdog.stdin.take());
        let _ = self.watchdog.wait();
    }
}

static SHARED: Mutex<Weak<Dovecot>> = Mutex::new(Weak::new());

/// Why these tests cannot run here, outside CI (in CI they must).
fn missing() -> Option<String> {
    let ci = std::env::var("CI").is_ok_and(|v| v == "true");
    let why = if Command::new("dovecot").arg("--version").output().is_err() {
        "dovecot is not installed (apt-get install dovecot-pop3d dovecot-imapd)"
    } else if !nix::unistd::geteuid().is_root() {
        "Dovecot needs root to serve mail as the mail user"
    } else {
        return None;
    };
    assert!(!ci, "{why}: in CI this test must run");
    Some(why.to_string())
}

/// The shared Dovecot, started when no test holds it.
async fn dovecot() -> Arc<Dovecot> {
    let d = shared_dovecot();
    for addr in [d.pop3, d.imap] {
        wait_port(addr).await;
    }
    d
}

fn shared_dovecot() -> Arc<Dovecot> {
    let mut shared = SHARED.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(d) = shared.upgrade() {
        return d;
    }
    let d = Arc::new(start_dovecot());
    *shared = Arc::downgrade(&d);
    d
}

fn start_dovecot() -> Dovecot {
    use std::os::unix::fs::PermissionsExt;
    let data = tempfile::tempdir().unwrap();
    let root = data.path();
    std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o755)).unwrap();
    for dir in ["run", "state", "mail"] {
        std::fs::create_dir(root.join(dir)).unwrap();
    }
    let passwd: String = USERS
        .iter()
        .map(|u| format!("{u}:{{PLAIN}}{PASSWORD}::::::\n"))
        .collect();
    std::fs::write(root.join("passwd"), passwd).unwrap();
    let (pop3, imap) = (free_port(), free_port());
    let r = root.display();
    let conf = format!(
        r#"protocols = pop3 imap
listen = 127.0.0.1
base_dir = {r}/run
state_dir = {r}/state
log_path = {r}/dovecot.log
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain
mail_location = maildir:~/Maildir
first_valid_uid = 8
first_valid_gid = 8
default_login_user = dovenull
default_internal_user = dovecot
pop3_reuse_xuidl = yes
passdb {{
  driver = passwd-file
  args = scheme=PLAIN {r}/passwd
}}
userdb {{
  driver = static
  args = uid=mail gid=mail home={r}/mail/%u
}}
service pop3-login {{
  inet_listener pop3 {{
    address = 127.0.0.1
    port = {pop3}
  }}
  inet_listener pop3s {{
    port = 0
  }}
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {imap}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
"#
    );
    std::fs::write(root.join("dovecot.conf"), conf).unwrap();
    // Dovecot in the foreground under a shell that stops it when this
    // process goes (its stdin, a pipe from us, closes).
    let script = format!(
        "dovecot -F -c {r}/dovecot.conf & echo $! > {r}/dovecot.pid; cat > /dev/null; kill $(cat {r}/dovecot.pid)"
    );
    let watchdog = Command::new("sh")
        .arg("-c")
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    Dovecot {
        pop3: format!("127.0.0.1:{pop3}").parse().unwrap(),
        imap: format!("127.0.0.1:{imap}").parse().unwrap(),
        data,
        watchdog,
    }
}

async fn wait_port(addr: SocketAddr) {
    for _ in 0..400 {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("nothing listens on {addr}");
}

impl Dovecot {
    fn maildir(&self, user: &str) -> PathBuf {
        self.data.path().join("mail").join(user).join("Maildir")
    }

    /// Makes `user`'s Maildir with `messages`, owned by the mail user
    /// as Dovecot would have it.
    fn make_maildir(&self, user: &str, messages: &[(String, Vec<u8>)]) {
        let md = self.maildir(user);
        for sub in ["new", "cur", "tmp"] {
            std::fs::create_dir_all(md.join(sub)).unwrap();
        }
        for (name, body) in messages {
            std::fs::write(md.join("new").join(name), body).unwrap();
        }
        chown_mail(&self.data.path().join("mail").join(user));
    }
}

fn chown_mail(path: &Path) {
    let status = Command::new("chown")
        .arg("-R")
        .arg("mail:mail")
        .arg(path)
        .status()
        .unwrap();
    assert!(status.success());
}

/// mailbag on the same Maildirs and the same passwd-file, in process.
struct Mailbag {
    addr: SocketAddr,
    shutdown: CancellationToken,
    _dir: tempfile::TempDir,
}

impl Drop for Mailbag {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn start_mailbag(d: &Dovecot, store_keys: &str) -> Mailbag {
    let dir = tempfile::tempdir().unwrap();
    let r = d.data.path().display();
    let text = format!(
        "[pop3]\nlisten = [\"127.0.0.1:0\"]\n[store]\nroot = \"{r}/mail\"\npath = \"{{root}}/{{user}}/Maildir\"\n{store_keys}\n[auth]\npasswd_file = \"{r}/passwd\"\nfailure_delay_ms = 10\nsecret_file = \"secret\"\n"
    );
    let config_path = dir.path().join("mailbag.toml");
    std::fs::write(&config_path, text).unwrap();
    let config = Config::load(&config_path).unwrap();
    let passdb = PasswdFile::open_with(
        &config.auth.passwd_file,
        mailbag::auth::cache::VerifiedCache::from_config(&config.auth),
        mailbag::auth::secret::ServerSecret::load_or_create(&config.auth.secret_file).unwrap(),
    )
    .unwrap();
    let store = MaildirStore::new(
        config.store.root.clone(),
        config.store.path.clone(),
        config.store.default_domain.clone(),
    )
    .with_uidl_sources(config.store.uidl_sources());
    let server = Server::bind(config, store, passdb).await.unwrap();
    let addr = server.local_addrs()[0];
    let shutdown = CancellationToken::new();
    tokio::spawn(server.run(shutdown.clone()));
    Mailbag {
        addr,
        shutdown,
        _dir: dir,
    }
}

/// The UIDL list a POP3 server shows `user`, by Python's poplib; the
/// session ends with QUIT and deletes nothing.
async fn poplib_uidls(addr: SocketAddr, user: &str) -> Vec<String> {
    let script = format!(
        "import poplib\n\
         p = poplib.POP3('127.0.0.1', {port}, timeout=20)\n\
         p.user('{user}')\n\
         p.pass_('{PASSWORD}')\n\
         for line in p.uidl()[1]:\n    print(line.decode().split(' ', 1)[1])\n\
         p.quit()\n",
        port = addr.port()
    );
    let out = tokio::process::Command::new("python3")
        .arg("-c")
        .arg(script)
        .output()
        .await
        .expect("python3");
    assert!(
        out.status.success(),
        "poplib: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Runs `fetchmail --keep` with UIDL tracking in `idfile` against
/// `addr` for `user`; returns how many messages it downloaded.
async fn fetchmail_keep(addr: SocketAddr, user: &str, work: &Path) -> usize {
    use std::os::unix::fs::PermissionsExt;
    let rc = work.join("fetchmailrc");
    std::fs::write(
        &rc,
        format!(
            "set idfile \"{idfile}\"\n\
             poll 127.0.0.1 service {port} protocol pop3 uidl\n\
             \tuser \"{user}\" password \"{PASSWORD}\" keep sslproto ''\n\
             \tmda \"/bin/sh -c 'cat > /dev/null'\"\n",
            idfile = work.join("fetchids").display(),
            port = addr.port()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&rc, std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = tokio::process::Command::new("fetchmail")
        .arg("-f")
        .arg(&rc)
        .arg("--nodetach")
        .arg("-v")
        // Each run its own PID file: as root, fetchmail's default is one
        // for the whole machine, and tests run side by side.
        .arg("--pidfile")
        .arg(work.join("fetchmail.pid"))
        .env("HOME", work)
        .env("FETCHMAILHOME", work)
        .output()
        .await
        .expect("fetchmail");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Exit 0: mail fetched; 1: no new mail.
    assert!(
        matches!(out.status.code(), Some(0 | 1)),
        "fetchmail failed: {text}"
    );
    text.lines()
        .filter(|l| l.contains("reading message"))
        .count()
}

/// Lets Dovecot's IMAP side sync the Maildir (it assigns UIDs to every
/// message it has not seen, and writes its dovecot-uidlist).
async fn imap_select(addr: SocketAddr, user: &str) {
    let script = format!(
        "import imaplib\n\
         m = imaplib.IMAP4('127.0.0.1', {port})\n\
         m.login('{user}', '{PASSWORD}')\n\
         print(m.select('INBOX'))\n\
         m.logout()\n",
        port = addr.port()
    );
    let out = tokio::process::Command::new("python3")
        .arg("-c")
        .arg(script)
        .output()
        .await
        .expect("python3");
    assert!(
        out.status.success(),
        "imaplib: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn message_name(i: usize) -> String {
    format!("{}.M{i}P4242.oldhost", 1_700_000_000 + i)
}

fn body(i: usize, extra_header: &str) -> Vec<u8> {
    format!("{extra_header}Subject: message {i}\nFrom: a@example.test\n\nbody {i}\n").into_bytes()
}

/// After the switch: a message arrives, mailbag shows it (its own form),
/// Dovecot's IMAP side then indexes it; mailbag's UIDLs of all messages
/// stay as they were.
async fn new_message_keeps_its_first_uidl(
    d: &Dovecot,
    user: &str,
    store_keys: &str,
    before: &[String],
) {
    let name = message_name(MESSAGES + 1);
    let md = d.maildir(user);
    std::fs::write(md.join("new").join(&name), body(MESSAGES + 1, "")).unwrap();
    chown_mail(&md);
    let mailbag = start_mailbag(d, store_keys).await;
    let shown = poplib_uidls(mailbag.addr, user).await;
    assert_eq!(shown[..before.len()], *before);
    assert_eq!(
        shown.last(),
        Some(&name),
        "a new message gets mailbag's own form"
    );
    drop(mailbag);

    imap_select(d.imap, user).await;
    let uidlist = std::fs::read_to_string(md.join("dovecot-uidlist")).unwrap();
    assert!(uidlist.contains(&name), "Dovecot indexed it: {uidlist}");

    let mailbag = start_mailbag(d, store_keys).await;
    assert_eq!(poplib_uidls(mailbag.addr, user).await, shown);
}

#[tokio::test]
async fn from_dovecot_no_message_is_downloaded_again() {
    if let Some(why) = missing() {
        eprintln!("SKIPPED: {why}");
        return;
    }
    let d = dovecot().await;
    let user = USERS[0];
    let messages: Vec<(String, Vec<u8>)> = (1..=MESSAGES)
        .map(|i| (message_name(i), body(i, "")))
        .collect();
    d.make_maildir(user, &messages);
    let work = tempfile::tempdir().unwrap();

    let dovecot_uidls = poplib_uidls(d.pop3, user).await;
    assert_eq!(dovecot_uidls.len(), MESSAGES);
    println!("Dovecot's first UIDL: {}", dovecot_uidls[0]);
    assert_eq!(fetchmail_keep(d.pop3, user, work.path()).await, MESSAGES);

    // The switch: mailbag on the same files, with Dovecot's UIDLs.
    let keys = "uidl_dovecot = true";
    let mailbag = start_mailbag(&d, keys).await;
    assert_eq!(poplib_uidls(mailbag.addr, user).await, dovecot_uidls);
    assert_eq!(fetchmail_keep(mailbag.addr, user, work.path()).await, 0);
    drop(mailbag);

    new_message_keeps_its_first_uidl(&d, user, keys, &dovecot_uidls).await;
}

#[tokio::test]
async fn from_x_uidl_headers_no_message_is_downloaded_again() {
    if let Some(why) = missing() {
        eprintln!("SKIPPED: {why}");
        return;
    }
    let d = dovecot().await;
    let user = USERS[1];
    // As qpopper leaves them: an X-UIDL header in every message.
    let messages: Vec<(String, Vec<u8>)> = (1..=MESSAGES)
        .map(|i| {
            let header = format!("X-UIDL: {:032x}\n", 0xfeed_0000_u64 + i as u64);
            (message_name(i), body(i, &header))
        })
        .collect();
    d.make_maildir(user, &messages);
    let work = tempfile::tempdir().unwrap();

    // Dovecot with pop3_reuse_xuidl shows them, as qpopper did.
    let old_uidls = poplib_uidls(d.pop3, user).await;
    assert_eq!(old_uidls[0], format!("{:032x}", 0xfeed_0001_u64));
    assert_eq!(fetchmail_keep(d.pop3, user, work.path()).await, MESSAGES);

    let keys = "uidl_x_header = true";
    let mailbag = start_mailbag(&d, keys).await;
    assert_eq!(poplib_uidls(mailbag.addr, user).await, old_uidls);
    assert_eq!(fetchmail_keep(mailbag.addr, user, work.path()).await, 0);
    drop(mailbag);

    new_message_keeps_its_first_uidl(&d, user, keys, &old_uidls).await;
}

#[tokio::test]
async fn from_courier_no_message_is_downloaded_again() {
    if let Some(why) = missing() {
        eprintln!("SKIPPED: {why}");
        return;
    }
    let d = dovecot().await;
    let user = USERS[2];
    let messages: Vec<(String, Vec<u8>)> = (1..=MESSAGES)
        .map(|i| (message_name(i), body(i, "")))
        .collect();
    d.make_maildir(user, &messages);
    // What Courier's pop3d leaves after serving them (version 3 lines:
    // name, size, uid:uidvalidity:utf8), and what fetchmail --keep
    // remembers of that server.
    let uidv = 1_650_000_000u64;
    let mut sizelist = format!("/3 {} {uidv}\n", MESSAGES + 1);
    let mut old_uidls = Vec::new();
    for (i, (name, body)) in messages.iter().enumerate() {
        sizelist.push_str(&format!("{name}:2,S {} {}:{uidv}:0\n", body.len(), i + 1));
        old_uidls.push(format!("UID{}-{uidv}", i + 1));
    }
    let md = d.maildir(user);
    std::fs::write(md.join("courierpop3dsizelist"), sizelist).unwrap();
    chown_mail(&md);
    let work = tempfile::tempdir().unwrap();

    let keys = "uidl_courier = true";
    let mailbag = start_mailbag(&d, keys).await;
    assert_eq!(poplib_uidls(mailbag.addr, user).await, old_uidls);
    // fetchmail, having kept all of them from Courier, finds nothing new.
    let ids: String = old_uidls
        .iter()
        .map(|u| format!("{user}@127.0.0.1 {u}\n"))
        .collect();
    std::fs::write(work.path().join("fetchids"), ids).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::Permissions::from_mode(0o600);
        std::fs::set_permissions(work.path().join("fetchids"), mode).unwrap();
    }
    assert_eq!(fetchmail_keep(mailbag.addr, user, work.path()).await, 0);
    drop(mailbag);

    new_message_keeps_its_first_uidl(&d, user, keys, &old_uidls).await;
}

/// The UIDL listing of one session (`UIDL` after `USER`/`PASS`, sent at
/// once), as far as it came before the connection ended: `Some` only
/// when it came whole.
async fn uidl_listing(
    addr: SocketAddr,
    kill: Option<(std::process::Child, Duration)>,
) -> Option<Vec<String>> {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    let mut stream = None;
    for _ in 0..400 {
        if let Ok(s) = tokio::net::TcpStream::connect(addr).await {
            stream = Some(s);
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let mut stream = tokio::io::BufReader::new(stream.expect("server came up"));
    let mut greeting = String::new();
    stream.read_line(&mut greeting).await.unwrap();
    stream
        .get_mut()
        .write_all(b"USER alice\r\nPASS wonderland\r\nUIDL\r\nQUIT\r\n")
        .await
        .unwrap();
    // The kill races the reading.
    let killer = kill.map(|(mut child, after)| {
        std::thread::spawn(move || {
            std::thread::sleep(after);
            child.kill().unwrap();
            child.wait().unwrap();
        })
    });
    let mut lines = Vec::new();
    loop {
        let mut line = String::new();
        let read = tokio::time::timeout(Duration::from_secs(20), stream.read_line(&mut line))
            .await
            .expect("server answers");
        if !matches!(read, Ok(n) if n > 0) {
            if let Some(k) = killer {
                k.join().unwrap();
            }
            return None;
        }
        if line == ".\r\n" {
            break;
        }
        // A refused login (the previous session still ending) has no
        // listing to wait for.
        if line.starts_with("-ERR") && lines.len() < 3 {
            lines.push(line.trim_end().to_string());
            break;
        }
        lines.push(line.trim_end().to_string());
    }
    if let Some(k) = killer {
        k.join().unwrap();
    } else {
        // QUIT: the session's lock goes before the connection ends, so
        // the next listing does not meet it.
        let mut rest = Vec::new();
        let _ = tokio::time::timeout(
            Duration::from_secs(20),
            tokio::io::AsyncReadExt::read_to_end(&mut stream, &mut rest),
        )
        .await;
    }
    // USER, PASS, then the UIDL status line.
    let ok = lines.len() >= 3 && lines[..3].iter().all(|l| l.starts_with("+OK"));
    assert!(ok, "{lines:?}");
    Some(lines[3..].to_vec())
}

/// A server process killed at a random moment of the first open of a
/// maildrop with Dovecot's UIDLs (which records them) leaves a record
/// that is absent or whole, and a UIDL listing that a client received
/// before the kill is the listing after the restart, even though the
/// Dovecot file changed meanwhile (a record missing after a UIDL was
/// answered would show that).
#[tokio::test]
async fn uidls_shown_survive_a_kill_while_they_are_recorded() {
    use crate::support::{as_unprivileged, config_text, write_passwd};
    const ROUNDS: u64 = 14;
    const COUNT: usize = 2000;
    let mut seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
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
    let mut seen_before_kill = 0;
    // Kills land within this much of the login: after the first round,
    // twice what a whole listing took then.
    let mut window = Duration::from_millis(400);
    for round in 0..ROUNDS {
        let dir = tempfile::tempdir().unwrap();
        write_passwd(dir.path());
        let md = dir.path().join("mail/localhost/alice/Maildir");
        for sub in ["new", "cur", "tmp"] {
            std::fs::create_dir_all(md.join(sub)).unwrap();
        }
        let mut uidlist = format!("3 V{} N{}\n", 1000 + round, COUNT + 1);
        for i in 0..COUNT {
            let name = format!("{}.M{i}P1.host,S=8,W=9", 1_700_000_000 + i);
            std::fs::write(md.join("cur").join(format!("{name}:2,S")), b"body {i}\n").unwrap();
            uidlist.push_str(&format!("{} :{name}\n", i + 1));
        }
        std::fs::write(md.join("dovecot-uidlist"), &uidlist).unwrap();
        let port = free_port();
        let text = config_text(
            dir.path(),
            "[store]\nroot = \"mail\"\nuidl_dovecot = true\n",
        )
        .replace("127.0.0.1:0", &format!("127.0.0.1:{port}"));
        std::fs::write(dir.path().join("mailbag.toml"), text).unwrap();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let serve = |dir: &Path| {
            let mut cmd = Command::new(env!("CARGO_BIN_EXE_mailbag"));
            as_unprivileged(&mut cmd, dir);
            cmd.arg("serve")
                .arg("--config")
                .arg(dir.join("mailbag.toml"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap()
        };
        let mut child = serve(dir.path());
        // Wait for the listener, then kill somewhere in the first open
        // (the first round only measures how long that takes).
        wait_port(addr).await;
        let wait = window.mul_f64((next() % 1000) as f64 / 1000.0);
        let started = std::time::Instant::now();
        let before = if round == 0 {
            let listing = uidl_listing(addr, None).await;
            window = started.elapsed() * 2;
            println!("a whole first listing took {:?}", started.elapsed());
            child.kill().unwrap();
            child.wait().unwrap();
            listing
        } else {
            uidl_listing(addr, Some((child, wait))).await
        };

        match std::fs::read(md.join("mailbag.uidls")) {
            Ok(bytes) => assert_eq!(
                mailbag::store::maildir::parse_shown(&bytes).len(),
                COUNT,
                "round {round}: a partial record"
            ),
            Err(e) => {
                assert_eq!(e.kind(), std::io::ErrorKind::NotFound);
                assert!(
                    before.is_none(),
                    "round {round}: UIDLs shown, none recorded"
                );
            }
        }
        // Dovecot renumbers: only the record can keep what was shown.
        std::fs::write(
            md.join("dovecot-uidlist"),
            uidlist.replacen(&format!("V{}", 1000 + round), "V77", 1),
        )
        .unwrap();
        let mut child = serve(dir.path());
        let after = uidl_listing(addr, None).await.expect("a whole listing");
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(after.len(), COUNT);
        if let Some(before) = before {
            seen_before_kill += 1;
            assert_eq!(before, after, "round {round} (killed after {wait:?})");
        }
    }
    println!("listing received before the kill in {seen_before_kill} of {ROUNDS} rounds");
}

/// check-config names a `pop3_uidl_format` mailbag cannot reproduce, and
/// says why, and accepts Dovecot's default and its other forms.
#[test]
fn check_config_reports_bad_dovecot_uidl_formats() {
    use crate::support::{config_text, write_passwd};
    let dir = tempfile::tempdir().unwrap();
    write_passwd(dir.path());
    let path = dir.path().join("mailbag.toml");
    let check = |format: &str| {
        let extra = format!(
            "[store]\nroot = \"mail\"\nuidl_dovecot = true\nuidl_dovecot_format = \"{format}\"\n"
        );
        std::fs::write(&path, config_text(dir.path(), &extra)).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_mailbag"))
            .arg("check-config")
            .arg("--config")
            .arg(&path)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    for good in [
        "%08Xu%08Xv",
        "%v.%u",
        "%f",
        "%g",
        "UID%u-%v",
        "%{uid}%{uidvalidity}",
    ] {
        let (ok, err) = check(good);
        assert!(ok, "{good}: {err}");
    }
    for (bad, why) in [
        ("%08Xm%08Xv", "header MD5"),
        ("%q", "unknown variable %q"),
        ("static", "every message would get the same UIDL"),
    ] {
        let (ok, err) = check(bad);
        assert!(!ok, "{bad} accepted");
        assert!(err.contains("store.uidl_dovecot_format"), "{bad}: {err}");
        assert!(err.contains(why), "{bad}: {err}");
    }
}

/// `mailbag import --from maildir:` into the PostgreSQL store keeps the
/// UIDLs Dovecot showed, for every user, even where two users' UIDLs are
/// the same; a UIDL the user's own maildrop already has gets a new one,
/// and the import says how many kept theirs.
#[tokio::test]
async fn import_into_postgres_keeps_dovecot_uidls() {
    use crate::support::pg::{Backend, Fixture};
    use mailbag::store::{Maildrop, Store};
    let Some(f) = Fixture::new(Backend::Postgres, "migrate_import").await else {
        return;
    };
    let text = std::fs::read_to_string(&f.config_path).unwrap();
    std::fs::write(
        &f.config_path,
        text.replace(
            "[store]\n",
            "[store]\nuidl_dovecot = true\nuidl_x_header = true\n",
        ),
    )
    .unwrap();
    let source = f.dir.path().join("old/Maildir");
    for sub in ["new", "cur", "tmp"] {
        std::fs::create_dir_all(source.join(sub)).unwrap();
    }
    let names: Vec<String> = (1..=4).map(message_name).collect();
    let mut uidlist = String::from("3 V1700000000 N4\n");
    for (i, name) in names.iter().enumerate() {
        std::fs::write(source.join("cur").join(format!("{name}:2,S")), body(i, "")).unwrap();
        if i < 3 {
            uidlist.push_str(&format!("{} :{name}\n", i + 1));
        }
    }
    std::fs::write(source.join("dovecot-uidlist"), uidlist).unwrap();
    let want = [
        "000000016553f100".to_string(),
        "000000026553f100".to_string(),
        "000000036553f100".to_string(),
        names[3].clone(),
    ];
    let import_from = |user: &str, from: String| {
        let out = Command::new(env!("CARGO_BIN_EXE_mailbag"))
            .args(["import", "--user", user, "--from"])
            .arg(from)
            .arg("--config")
            .arg(&f.config_path)
            .env("MAILBAG_LOG", "warn")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{stderr}");
        (String::from_utf8_lossy(&out.stdout).into_owned(), stderr)
    };
    let import = |user: &str| {
        let (stdout, stderr) = import_from(user, format!("maildir:{}", source.display()));
        assert!(
            stdout.starts_with("copied and verified 4 messages"),
            "{stderr}"
        );
        stderr
    };
    let said = import("alice");
    assert!(said.contains("every message kept its UIDL"), "{said}");
    let store = crate::support::pg::pg_store(f.url.as_deref().unwrap());
    let uidls = |m: &mailbag::store::postgres::PgMaildrop| -> Vec<String> {
        m.messages().iter().map(|i| i.uid.clone()).collect()
    };
    let alice = store.open("alice".into()).await.unwrap();
    assert_eq!(uidls(&alice), want);
    drop(alice);

    // The same Maildir for another user (two users whose Dovecot
    // mailboxes share a UIDVALIDITY show the same UIDLs): a UIDL is
    // unique within its maildrop only, so bob keeps every one too.
    let said = import("bob");
    assert!(said.contains("every message kept its UIDL"), "{said}");
    let bob = store.open("bob".into()).await.unwrap();
    assert_eq!(uidls(&bob), want);
    drop(bob);

    // Into alice again: her maildrop holds every one of those UIDLs, so
    // the copies get new ones.
    let said = import("alice");
    assert!(!said.contains("kept"), "{said}");
    let alice = store.open("alice".into()).await.unwrap();
    let all = uidls(&alice);
    assert_eq!(all.len(), 8);
    assert_eq!(all[..4], want);
    assert!(all[4..].iter().all(|u| !want.contains(u)), "{all:?}");
    let distinct: std::collections::HashSet<&String> = all.iter().collect();
    assert_eq!(distinct.len(), 8);
    drop(alice);

    // A qpopper spool: the X-UIDL of each message.
    let mbox = f.dir.path().join("carol.mbox");
    std::fs::write(
        &mbox,
        "From a@b Mon Jan  1 00:00:00 2024\nX-UIDL: 8f3a0c1d2e\nSubject: q1\n\none\n\n\
         From a@b Mon Jan  1 00:00:01 2024\nX-UIDL: 8f3a0c1d2f\nSubject: q2\n\ntwo\n",
    )
    .unwrap();
    let (stdout, stderr) = import_from("carol", format!("mbox:{}", mbox.display()));
    assert!(
        stdout.starts_with("copied and verified 2 messages"),
        "{stderr}"
    );
    let carol = store.open("carol".into()).await.unwrap();
    assert_eq!(uidls(&carol), ["8f3a0c1d2e", "8f3a0c1d2f"]);
}

/// A malformed `dovecot-uidlist` and a `courierpop3dsizelist` the server
/// cannot read: logins work (mailbag's own UIDLs), the other server's
/// files are left as they were, and the log says which file and why,
/// once for the Maildir however many logins meet it.
#[tokio::test]
async fn broken_foreign_files_are_logged_once_and_sessions_work() {
    use std::os::unix::fs::PermissionsExt;

    use crate::support::{as_unprivileged, config_text, write_passwd};
    let dir = tempfile::tempdir().unwrap();
    write_passwd(dir.path());
    let md = dir.path().join("mail/localhost/alice/Maildir");
    for sub in ["new", "cur", "tmp"] {
        std::fs::create_dir_all(md.join(sub)).unwrap();
    }
    let name = message_name(1);
    std::fs::write(md.join("new").join(&name), body(1, "")).unwrap();
    let garbage = b"3 V1700000000\n1 :whatever\n";
    std::fs::write(md.join("dovecot-uidlist"), garbage).unwrap();
    let port = free_port();
    let text = config_text(
        dir.path(),
        "[store]\nroot = \"mail\"\nuidl_dovecot = true\nuidl_courier = true\n",
    )
    .replace("127.0.0.1:0", &format!("127.0.0.1:{port}"));
    std::fs::write(dir.path().join("mailbag.toml"), text).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mailbag"));
    as_unprivileged(&mut cmd, dir.path());
    // After the tree is given to the server's user: nobody may read it.
    std::fs::write(md.join("courierpop3dsizelist"), b"/3 2 5\n").unwrap();
    std::fs::set_permissions(
        md.join("courierpop3dsizelist"),
        std::fs::Permissions::from_mode(0o000),
    )
    .unwrap();
    let mut child = cmd
        .arg("serve")
        .arg("--config")
        .arg(dir.path().join("mailbag.toml"))
        .env("MAILBAG_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    wait_port(addr).await;
    for _ in 0..3 {
        let listing = uidl_listing(addr, None).await.expect("a whole listing");
        assert_eq!(listing, [format!("1 {name}")]);
    }
    child.kill().unwrap();
    let out = child.wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    let malformed: Vec<&str> = log.lines().filter(|l| l.contains("is malformed")).collect();
    assert_eq!(malformed.len(), 1, "{log}");
    assert!(malformed[0].contains("dovecot-uidlist"), "{log}");
    let unreadable: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("cannot be read"))
        .collect();
    assert_eq!(unreadable.len(), 1, "{log}");
    assert!(unreadable[0].contains("courierpop3dsizelist"), "{log}");
    assert_eq!(std::fs::read(md.join("dovecot-uidlist")).unwrap(), garbage);
}
