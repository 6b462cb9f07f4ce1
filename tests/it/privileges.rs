//! Mail is never touched as root. A real `mailbag serve` started as root
//! drops to a throwaway system user; every admin command run as root
//! against the same config does its work as that user; afterwards the
//! mail is fetched byte-exact over a socket and no file in the store or
//! the passwd-file belongs to root. These tests need root (CI runs as
//! root) and say so when skipped.

use std::net::SocketAddr;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::support::*;

/// A system user made for one test (`mbtest-` and a random suffix, its
/// own group, no home), removed when dropped, even after a failure.
struct SystemUser {
    name: String,
    uid: u32,
    gid: u32,
}

impl SystemUser {
    /// The user, or `None` (after saying why) when not running as root.
    fn create(test: &str) -> Option<SystemUser> {
        if !nix::unistd::geteuid().is_root() {
            println!("SKIPPED {test}: it switches users, which needs root");
            return None;
        }
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let name = format!(
            "mbtest-{:06x}",
            (nanos ^ std::process::id().rotate_left(12)) & 0xff_ffff
        );
        let out = Command::new("useradd")
            .args(["--system", "--no-create-home", "--user-group"])
            .args(["--shell", "/usr/sbin/nologin", &name])
            .output()
            .expect("useradd");
        assert!(
            out.status.success(),
            "useradd {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // Removed from here on, whatever happens next.
        let mut user = SystemUser {
            name,
            uid: 0,
            gid: 0,
        };
        let found = nix::unistd::User::from_name(&user.name)
            .unwrap()
            .expect("the new user");
        (user.uid, user.gid) = (found.uid.as_raw(), found.gid.as_raw());
        assert_ne!(user.uid, 0);
        Some(user)
    }
}

impl Drop for SystemUser {
    fn drop(&mut self) {
        let _ = Command::new("userdel").arg(&self.name).output();
        let _ = Command::new("groupdel").arg(&self.name).output();
    }
}

/// Kills the server process when the test ends, passed or not.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn chown(path: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::chown(path, Some(uid), Some(gid)).unwrap();
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// A deployment as docs/DEPLOYMENT.md describes it: the config, the
/// certificate and the key belong to root and are readable by the
/// service group; the passwd-file's directory and the mail root belong
/// to the service user.
struct Deployment {
    dir: tempfile::TempDir,
    config: PathBuf,
    port: u16,
}

impl Deployment {
    fn new(user: &SystemUser) -> Deployment {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path();
        chmod(base, 0o755);
        for (sub, owner, mode) in [
            ("etc", None, 0o755),
            ("tls", Some((0, user.gid)), 0o750),
            ("users", Some((user.uid, user.gid)), 0o700),
            ("mail", Some((user.uid, user.gid)), 0o750),
            ("export", Some((user.uid, user.gid)), 0o700),
            ("source", None, 0o755),
        ] {
            let path = base.join(sub);
            std::fs::create_dir(&path).unwrap();
            if let Some((uid, gid)) = owner {
                chown(&path, uid, gid);
            }
            chmod(&path, mode);
        }
        let (cert, key) = (base.join("tls/cert.pem"), base.join("tls/key.pem"));
        mailbag::server::tls::write_self_signed(&["localhost"], &cert, &key).unwrap();
        for file in [&cert, &key] {
            chown(file, 0, user.gid);
            chmod(file, 0o640);
        }
        let port = free_port();
        let config = base.join("etc/mailbag.toml");
        std::fs::write(
            &config,
            format!(
                "[pop3]\nlisten = [\"127.0.0.1:{port}\"]\n\
                 [store]\nroot = \"{mail}\"\n\
                 [auth]\npasswd_file = \"{users}/passwd\"\nfailure_delay_ms = 10\n\
                 [tls]\ncertificate = \"{cert}\"\nkey = \"{key}\"\n\
                 [server]\nuser = \"{name}\"\ngroup = \"{name}\"\n",
                mail = base.join("mail").display(),
                users = base.join("users").display(),
                cert = cert.display(),
                key = key.display(),
                name = user.name,
            ),
        )
        .unwrap();
        chown(&config, 0, user.gid);
        chmod(&config, 0o640);
        Deployment { dir, config, port }
    }

    fn path(&self, sub: &str) -> PathBuf {
        self.dir.path().join(sub)
    }

    /// `mailbag ARGS --config <config>` as root, with `stdin`.
    fn run(&self, args: &[&str], stdin: &[u8]) -> Output {
        use std::io::Write;
        let mut child = Command::new(env!("CARGO_BIN_EXE_mailbag"))
            .args(args)
            .arg("--config")
            .arg(&self.config)
            .env("MAILBAG_LOG", "warn")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let _ = child.stdin.take().unwrap().write_all(stdin);
        child.wait_with_output().unwrap()
    }

    /// Like [`Deployment::run`], and it must succeed; returns stdout.
    fn ok(&self, args: &[&str], stdin: &[u8]) -> String {
        let out = self.run(args, stdin);
        assert!(
            out.status.success(),
            "mailbag {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// `mailbag serve` as root, its log in `serve.log`.
    fn serve(&self) -> Server {
        let log = std::fs::File::create(self.path("serve.log")).unwrap();
        Server(
            Command::new(env!("CARGO_BIN_EXE_mailbag"))
                .arg("serve")
                .arg("--config")
                .arg(&self.config)
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap(),
        )
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.path("serve.log")).unwrap_or_default()
    }

    async fn connect(&self, server: &mut Server) -> Client {
        let addr: SocketAddr = format!("127.0.0.1:{}", self.port).parse().unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(stream) = tokio::net::TcpStream::connect(addr).await {
                return Client {
                    stream: tokio::io::BufReader::new(stream),
                };
            }
            if let Ok(Some(status)) = server.0.try_wait() {
                panic!("mailbag serve exited ({status}):\n{}", self.log());
            }
            assert!(Instant::now() < deadline, "server never came up");
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

/// Every file and directory under `path` owned by root.
fn owned_by_root(path: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![path.to_path_buf()];
    while let Some(p) = stack.pop() {
        let meta = std::fs::symlink_metadata(&p).unwrap();
        if meta.uid() == 0 || meta.gid() == 0 {
            found.push(p.clone());
        }
        if meta.is_dir() {
            for e in std::fs::read_dir(&p).unwrap() {
                stack.push(e.unwrap().path());
            }
        }
    }
    found
}

/// The `Uid:`, `Gid:` and `Groups:` ids of a process.
fn ids(pid: u32) -> (Vec<String>, Vec<String>, Vec<String>) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| -> Vec<String> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap_or_default()
            .split_whitespace()
            .map(str::to_owned)
            .collect()
    };
    (field("Uid:"), field("Gid:"), field("Groups:"))
}

const M1: &[u8] = b"Subject: delivered one\n\nfirst body\n";
const M2: &[u8] = b"Subject: delivered two\r\n\r\nsecond \x00 body\r\n.leading dot\r\n";
const M3: &[u8] = b"Subject: from mbox\n\nthird\n";
const M4: &[u8] = b"Subject: from mbox too\n\nfourth\n";
const M5: &[u8] = b"Subject: from a maildir\n\nfifth\n";

#[tokio::test]
async fn every_admin_command_run_as_root_leaves_mail_the_server_can_serve() {
    let Some(user) = SystemUser::create("every_admin_command_run_as_root") else {
        return;
    };
    let d = Deployment::new(&user);
    // The passwd-file does not exist yet: `user add` creates it, as the
    // server's user.
    d.ok(
        &["user", "add", "alice", "--password-stdin"],
        b"alice pass\n",
    );
    let mut server = d.serve();
    let mut probe = d.connect(&mut server).await;
    probe.line().await;
    let (uids, gids, groups) = ids(server.0.id());
    let (uid, gid) = (user.uid.to_string(), user.gid.to_string());
    assert!(uids.iter().all(|u| *u == uid), "uids {uids:?}");
    assert!(gids.iter().all(|g| *g == gid), "gids {gids:?}");
    assert!(groups.iter().all(|g| *g == gid), "groups {groups:?}");

    // Every command that reads or writes users or mail, as root.
    d.ok(&["user", "add", "bob", "--password-stdin"], b"bob pass\n");
    d.ok(&["user", "add", "carol", "--password-stdin"], b"c1\n");
    d.ok(&["user", "passwd", "carol", "--password-stdin"], b"c2\n");
    d.ok(&["user", "del", "carol"], b"");
    assert_eq!(d.ok(&["user", "list"], b""), "alice\nbob\n");
    d.ok(&["deliver", "--user", "alice"], M1);
    d.ok(&["deliver", "--user", "alice"], M2);
    let mbox = d.path("source/in.mbox");
    let mut text = b"From a@example.org Thu Nov 26 10:00:00 2026\n".to_vec();
    text.extend_from_slice(M3);
    text.extend_from_slice(b"\nFrom b@example.org Thu Nov 26 10:00:01 2026\n");
    text.extend_from_slice(M4);
    std::fs::write(&mbox, text).unwrap();
    let from = format!("mbox:{}", mbox.display());
    d.ok(&["import", "--user", "alice", "--from", &from], b"");
    let source = d.path("source/Maildir");
    mailbag::store::maildir::deliver(&source, M5).unwrap();
    chmod(&source, 0o755);
    for sub in ["new", "cur", "tmp"] {
        chmod(&source.join(sub), 0o755);
    }
    for e in std::fs::read_dir(source.join("new")).unwrap() {
        chmod(&e.unwrap().path(), 0o644);
    }
    let from = format!("maildir:{}", source.display());
    d.ok(&["import", "--user", "alice", "--from", &from], b"");
    let table = d.ok(&["mailbox", "inspect", "alice"], b"");
    assert!(table.starts_with("alice: 5 messages"), "{table}");
    let header = d.ok(&["mailbox", "show", "alice", "1"], b"");
    assert!(header.contains("Subject:"), "{header}");
    let said = d.ok(&["mailbox", "quarantine", "alice", "2"], b"");
    let uidl = said
        .split("(UIDL ")
        .nth(1)
        .and_then(|rest| rest.split(')').next())
        .expect("the UIDL")
        .to_string();
    d.ok(&["mailbox", "release", "alice", &uidl], b"");
    let to = format!("maildir:{}", d.path("export/Maildir").display());
    d.ok(&["import", "--user", "alice", "--to", &to], b"");
    let to = format!("mbox:{}", d.path("export/out.mbox").display());
    d.ok(&["import", "--user", "alice", "--to", &to], b"");
    let checked = d.ok(&["check-config"], b"");
    assert!(checked.ends_with(": OK\n"), "{checked}");

    // The server re-reads what changed: users at once, the config and
    // the certificate on SIGHUP.
    let hup = Command::new("kill")
        .args(["-HUP", &server.0.id().to_string()])
        .status()
        .unwrap();
    assert!(hup.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    while !d.log().contains("SIGHUP: TLS certificate reloaded") {
        assert!(Instant::now() < deadline, "no reload:\n{}", d.log());
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(
        d.log().contains("SIGHUP: configuration reloaded"),
        "{}",
        d.log()
    );
    drop(probe);

    let mut bob = d.connect(&mut server).await;
    bob.line().await;
    bob.ok("USER bob").await;
    bob.ok("PASS bob pass").await;
    bob.ok("QUIT").await;

    let mut alice = d.connect(&mut server).await;
    alice.line().await;
    alice.ok("USER alice").await;
    let reply = alice.cmd("PASS alice pass").await;
    assert!(
        reply.starts_with("+OK Logged in. Maildrop has 5 messages"),
        "{reply}"
    );
    let mut got = Vec::new();
    for n in 1..=5 {
        let (_, body) = alice.multi(&format!("RETR {n}")).await;
        got.push(body);
    }
    alice.ok("QUIT").await;
    // `deliver --user alice` names the full address (the default domain).
    let delivered = |m: &[u8]| crlf(&[b"Delivered-To: alice@localhost\n".as_slice(), m].concat());
    let mut want = vec![delivered(M1), delivered(M2), crlf(M3), crlf(M4), crlf(M5)];
    want.sort();
    got.sort();
    assert!(got == want, "the messages differ from what went in");

    for path in [d.path("mail"), d.path("users"), d.path("export")] {
        let root_owned = owned_by_root(&path);
        assert!(root_owned.is_empty(), "owned by root: {root_owned:?}");
    }
    let passwd = std::fs::metadata(d.path("users/passwd")).unwrap();
    assert_eq!((passwd.uid(), passwd.gid()), (user.uid, user.gid));
}

#[test]
fn root_without_server_user_is_refused_with_what_to_set() {
    let Some(user) = SystemUser::create("root_without_server_user_is_refused") else {
        return;
    };
    let d = Deployment::new(&user);
    let text = std::fs::read_to_string(&d.config).unwrap();
    let (kept, _) = text.split_once("[server]").unwrap();
    std::fs::write(&d.config, kept).unwrap();
    std::fs::write(d.path("users/passwd"), "alice:{PLAIN}x\n").unwrap();
    for args in [
        &["serve"][..],
        &["mailbox", "inspect", "alice"],
        &["user", "list"],
        &["import", "--user", "alice", "--to", "maildir:/nonexistent"],
    ] {
        let out = d.run(args, b"");
        assert!(!out.status.success(), "{args:?} ran as root");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("as root: [server] user is not set")
                && err.contains("user = \"mailbag\"")
                && err.contains("group = \"mailbag\""),
            "{args:?}: {err}"
        );
    }
    // deliver answers the MTA with EX_CONFIG: the mail stays queued.
    let out = d.run(&["deliver", "--user", "alice"], M1);
    assert_eq!(out.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&out.stderr).contains("[server] user is not set"));
    // Nothing was created under the mail root.
    assert_eq!(std::fs::read_dir(d.path("mail")).unwrap().count(), 0);
}

#[test]
fn check_config_and_serve_name_each_file_the_server_user_cannot_use() {
    let Some(user) = SystemUser::create("check_config_names_each_file") else {
        return;
    };
    let d = Deployment::new(&user);
    d.ok(&["user", "add", "alice", "--password-stdin"], b"pw\n");
    d.ok(&["deliver", "--user", "alice"], M1);
    assert!(d.ok(&["check-config"], b"").ends_with(": OK\n"));
    let check = |want: &[&str]| {
        let out = d.run(&["check-config"], b"");
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!out.status.success(), "check-config passed");
        for w in want {
            assert!(err.contains(w), "{w:?} missing in:\n{err}");
        }
        err
    };

    // certbot's mode for a key: root only.
    let key = d.path("tls/key.pem");
    chown(&key, 0, 0);
    chmod(&key, 0o600);
    let fix = format!(
        "fix: chgrp {name} {k} && chmod g+r {k}",
        name = user.name,
        k = key.display()
    );
    check(&[
        &format!("tls.key {}: {} cannot read it", key.display(), user.name),
        "owner root:root, mode 0600",
        &fix,
    ]);
    // Serve refuses to start with it, after dropping root.
    let out = d.run(&["serve"], b"");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("tls.key {}", key.display())) && err.contains(&fix),
        "{err}"
    );
    chown(&key, 0, user.gid);
    chmod(&key, 0o640);

    // A passwd-file that root rewrote as its own.
    let passwd = d.path("users/passwd");
    chown(&passwd, 0, 0);
    chmod(&passwd, 0o600);
    check(&[
        &format!("auth.passwd_file {}", passwd.display()),
        &format!("fix: chown {0}:{0} {1}", user.name, passwd.display()),
    ]);
    // `user add` as root refuses too, and says why, before changing it.
    let before = std::fs::read(&passwd).unwrap();
    let out = d.run(&["user", "add", "bob", "--password-stdin"], b"pw\n");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("auth.passwd_file"));
    assert_eq!(std::fs::read(&passwd).unwrap(), before);
    chown(&passwd, user.uid, user.gid);

    // A lock and a message file in a Maildir, made by root.
    let maildir = d.path("mail/localhost/alice/Maildir");
    let lock = maildir.join("mailbag.lock");
    std::fs::write(&lock, b"").unwrap();
    // Readable, but the server's own file: it must be able to write it.
    chmod(&lock, 0o644);
    let message = std::fs::read_dir(maildir.join("new"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    chown(&message, 0, 0);
    chmod(&message, 0o600);
    let err = check(&[
        &format!("under store.root: {}", lock.display()),
        &format!("under store.root: {}", message.display()),
        &format!(
            "fix: chown {0}:{0} {1} && chmod u+rw {1}",
            user.name,
            lock.display()
        ),
    ]);
    assert!(err.contains("2 paths"), "{err}");

    // Many: the first ones, the count of the rest, one command for all.
    let cur = maildir.join("cur");
    for n in 0..25 {
        let file = cur.join(format!("{n}.root:2,S"));
        std::fs::write(&file, M1).unwrap();
        chmod(&file, 0o600);
    }
    let err = check(&[
        "27 paths",
        "... and 7 more under",
        &format!("chown -R {0}:{0} {1}", user.name, d.path("mail").display()),
    ]);
    assert_eq!(err.matches("under store.root:").count(), 20, "{err}");
}

#[test]
fn user_add_as_root_refuses_where_the_server_user_cannot_rewrite_the_passwd_file() {
    let Some(user) = SystemUser::create("user_add_refuses_a_root_directory") else {
        return;
    };
    let d = Deployment::new(&user);
    // The passwd-file next to the config, in a directory root owns.
    let text = std::fs::read_to_string(&d.config).unwrap().replace(
        &format!("{}/passwd", d.path("users").display()),
        &format!("{}/passwd", d.path("etc").display()),
    );
    std::fs::write(&d.config, text).unwrap();
    let passwd = d.path("etc/passwd");
    std::fs::write(&passwd, "alice:{PLAIN}x\n").unwrap();
    chown(&passwd, user.uid, user.gid);
    let out = d.run(&["user", "add", "bob", "--password-stdin"], b"pw\n");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "{} cannot create files in its directory {}",
            user.name,
            d.path("etc").display()
        )) && err.contains("keep the passwd-file in a directory that"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string(&passwd).unwrap(),
        "alice:{PLAIN}x\n"
    );
    // Reading needs no more than the file.
    assert_eq!(d.ok(&["user", "list"], b""), "alice\n");
    // check-config passes (the server only reads the file) and warns.
    let said = d.ok(&["check-config"], b"");
    assert!(
        said.contains("note: `mailbag user add|passwd|del` will refuse")
            && said.ends_with(": OK\n"),
        "{said}"
    );
}

#[tokio::test]
async fn the_server_secret_made_as_root_is_the_server_users_and_one_it_cannot_read_is_reported() {
    let Some(user) = SystemUser::create("the_server_secret_made_as_root") else {
        return;
    };
    let d = Deployment::new(&user);
    d.ok(&["user", "add", "alice", "--password-stdin"], b"pw\n");
    let secret = d.path("etc/mailbag.secret");
    assert!(!secret.exists());
    // The first start, as root, makes it: for the user the server becomes
    // (a later start as that user, systemd's `User=`, must read it).
    let mut server = d.serve();
    let mut c = d.connect(&mut server).await;
    assert!(c.line().await.starts_with("+OK"));
    drop(server);
    let meta = std::fs::symlink_metadata(&secret).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (user.uid, user.gid));
    assert_eq!(meta.mode() & 0o777, 0o600);
    assert!(d.ok(&["check-config"], b"").ends_with(": OK\n"));

    // One that root made as its own: named, with the fix, by check-config
    // and by serve.
    chown(&secret, 0, 0);
    let fix = format!("fix: chown {0}:{0} {1}", user.name, secret.display());
    for sub in ["check-config", "serve"] {
        let out = d.run(&[sub], b"");
        assert!(!out.status.success(), "{sub} passed");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(&format!("auth.secret_file {}", secret.display())) && err.contains(&fix),
            "{sub}: {err}"
        );
    }
    chown(&secret, user.uid, user.gid);
    assert!(d.ok(&["check-config"], b"").ends_with(": OK\n"));
}
