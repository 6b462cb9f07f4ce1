//! `mailbag migrate-uidls`: the UIDLs another POP3 server showed are
//! fetched over POP3 and kept for the messages that match by content,
//! with mailbag itself as the old server (the binary, over STLS and
//! implicit TLS, a master user by SASL authzid), with a real Dovecot (a
//! `user*master` login), and with a hostile server that breaks the bounds.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use mailbag::admin::migrate::{self, Limits, Login, Security, Source};
use mailbag::store::maildir::MaildirStore;
use mailbag_proto::secret::Secret;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use crate::support::*;

/// The UIDL list a POP3 server shows `user`, by message number.
async fn uidls(addr: SocketAddr, user: (&str, &str)) -> Vec<String> {
    let mut c = Client::connect(addr).await;
    c.line().await;
    c.ok(&format!("USER {}", user.0)).await;
    c.ok(&format!("PASS {}", user.1)).await;
    let (_, body) = c.multi("UIDL").await;
    c.ok("QUIT").await;
    String::from_utf8(body)
        .unwrap()
        .lines()
        .map(|l| l.split_whitespace().nth(1).unwrap().to_string())
        .collect()
}

fn message(i: usize) -> Vec<u8> {
    format!("From: sender{i}@example.org\nSubject: message {i}\n\nbody of message {i}\n")
        .into_bytes()
}

/// Runs `mailbag migrate-uidls` with the config in `dir`, off the test's
/// runtime (the servers it talks to run there).
async fn migrate_cmd(dir: &Path, args: &[&str]) -> std::process::Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mailbag"));
    cmd.arg("migrate-uidls")
        .arg("--config")
        .arg(dir.join("mailbag.toml"))
        .args(args)
        .stdin(Stdio::null());
    as_unprivileged(&mut cmd, dir);
    tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap()
}

#[tokio::test]
async fn uidls_from_mailbag_as_the_old_server_over_stls_and_implicit_tls() {
    // The old server: alice's three messages, and a master user.
    let old = TestServer::start_tls("master_users = [\"admin\"]").await;
    let passwd = old.dir.path().join("passwd");
    let mut text = std::fs::read_to_string(&passwd).unwrap();
    text.push_str("admin:{PLAIN}master-secret\n");
    std::fs::write(&passwd, text).unwrap();
    for i in 0..3 {
        old.deliver("alice", &message(i));
        std::thread::sleep(Duration::from_millis(2));
    }
    let old_uidls = uidls(old.addr, ALICE).await;
    assert_eq!(old_uidls.len(), 3);

    // Here: copies of messages 0 and 2 (CRLF endings, other file names),
    // and one the old server never had.
    let here = TestServer::start().await;
    let crlf_copy = |i| crlf(&message(i));
    here.deliver("alice", &crlf_copy(2));
    here.deliver("alice", &message(7));
    here.deliver("alice", &crlf_copy(0));
    let before = uidls(here.addr, ALICE).await;
    assert!(before.iter().all(|u| !old_uidls.contains(u)));
    std::fs::copy(
        old.dir.path().join("tls/cert.pem"),
        here.dir.path().join("old-ca.pem"),
    )
    .unwrap();
    std::fs::write(here.dir.path().join("master-password"), "master-secret\n").unwrap();
    let common = |port: u16, tls: &str| {
        vec![
            "--server".to_string(),
            format!("127.0.0.1:{port}"),
            "--tls".into(),
            tls.into(),
            "--tls-name".into(),
            "localhost".into(),
            "--ca-file".into(),
            here.dir.path().join("old-ca.pem").display().to_string(),
            "--master-user".into(),
            "admin".into(),
            "--master-password-file".into(),
            here.dir
                .path()
                .join("master-password")
                .display()
                .to_string(),
            "--master-authzid".into(),
            "--user".into(),
            "alice".into(),
        ]
    };

    let mut args = common(old.addr.port(), "stls");
    args.push("--dry-run".into());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = migrate_cmd(here.dir.path(), &args).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        stdout,
        "alice: 2 of 3 messages here would keep their UIDL (old server: 3 messages)\n"
    );
    // A dry run changes nothing.
    assert_eq!(uidls(here.addr, ALICE).await, before);

    let args = common(old.tls_addr.unwrap().port(), "implicit");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = migrate_cmd(here.dir.path(), &args).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.starts_with("alice: 2 of 3 messages here keep their UIDL")
            && stdout.contains("recorded 2, already recorded 0, refused 0"),
        "{stdout}"
    );
    // Here, in here's own order: message 2, then 7, then 0.
    let after = uidls(here.addr, ALICE).await;
    assert_eq!(after[0], old_uidls[2]);
    assert_eq!(after[1], before[1]);
    assert_eq!(after[2], old_uidls[0]);

    // The old server's certificate is checked: without its CA, no login.
    let mut args = common(old.tls_addr.unwrap().port(), "implicit");
    args.retain(|a| !a.ends_with("old-ca.pem") && a != "--ca-file");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = migrate_cmd(here.dir.path(), &args).await;
    assert!(!out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.starts_with("alice: not migrated: TLS:"), "{stdout}");
    old.stop().await;
    here.stop().await;
}

/// A Dovecot with a master user, on a private config in a temp dir.
struct Dovecot {
    data: tempfile::TempDir,
    pop3: SocketAddr,
    watchdog: std::process::Child,
}

impl Drop for Dovecot {
    fn drop(&mut self) {
        // Its shell stops Dovecot when stdin closes (also if we die).
        drop(self.watchdog.stdin.take());
        let _ = self.watchdog.wait();
    }
}

/// Why Dovecot cannot run here, outside CI (in CI it must).
fn dovecot_missing() -> Option<&'static str> {
    let why = if Command::new("dovecot").arg("--version").output().is_err() {
        "dovecot is not installed"
    } else if !nix::unistd::geteuid().is_root() {
        "Dovecot needs root to serve mail as the mail user"
    } else {
        return None;
    };
    assert!(
        !std::env::var("CI").is_ok_and(|v| v == "true"),
        "{why}: in CI this test must run"
    );
    Some(why)
}

fn start_dovecot(user: &str, password: &str) -> Dovecot {
    use std::os::unix::fs::PermissionsExt;
    let data = tempfile::tempdir().unwrap();
    let root = data.path();
    std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o755)).unwrap();
    for dir in ["run", "state", "mail"] {
        std::fs::create_dir(root.join(dir)).unwrap();
    }
    std::fs::write(
        root.join("passwd"),
        format!("{user}:{{PLAIN}}{password}::::::\n"),
    )
    .unwrap();
    std::fs::write(root.join("masters"), "migrator:{PLAIN}master-pw::::::\n").unwrap();
    let pop3 = free_port();
    let r = root.display();
    let conf = format!(
        r#"protocols = pop3
listen = 127.0.0.1
base_dir = {r}/run
state_dir = {r}/state
log_path = {r}/dovecot.log
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain
auth_master_user_separator = *
mail_location = maildir:~/Maildir
first_valid_uid = 8
first_valid_gid = 8
default_login_user = dovenull
default_internal_user = dovecot
passdb {{
  driver = passwd-file
  args = scheme=PLAIN {r}/masters
  master = yes
}}
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
"#
    );
    std::fs::write(root.join("dovecot.conf"), conf).unwrap();
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

#[tokio::test]
async fn uidls_from_a_real_dovecot_through_its_master_user() {
    if let Some(why) = dovecot_missing() {
        eprintln!("SKIPPED: {why}");
        return;
    }
    let d = start_dovecot("dove", "dove-pw");
    let md = d.data.path().join("mail/dove/Maildir");
    for sub in ["new", "cur", "tmp"] {
        std::fs::create_dir_all(md.join(sub)).unwrap();
    }
    for i in 0..5 {
        std::fs::write(
            md.join("new")
                .join(format!("17000000{i:02}.M{i}P1.oldhost")),
            message(i),
        )
        .unwrap();
    }
    let status = Command::new("chown")
        .args(["-R", "mail:mail"])
        .arg(d.data.path().join("mail"))
        .status()
        .unwrap();
    assert!(status.success());
    wait_port(d.pop3).await;
    let dovecot_uidls = uidls(d.pop3, ("dove", "dove-pw")).await;
    assert_eq!(dovecot_uidls.len(), 5);

    // Here: messages 1, 3 and 4 (copied by some tool under other names,
    // with CRLF endings), and one of our own.
    let here = TestServer::start_with_dir(|dir| {
        let mut passwd = std::fs::read_to_string(dir.join("passwd")).unwrap();
        passwd.push_str("dove:{PLAIN}dove-pw\n");
        std::fs::write(dir.join("passwd"), passwd).unwrap();
        String::new()
    })
    .await;
    for i in [1, 3, 4] {
        here.deliver("dove", &crlf(&message(i)));
    }
    here.deliver("dove", &message(9));
    let config = mailbag::config::Config::load(&here.config_path).unwrap();
    let store = MaildirStore::new(
        config.store.root.clone(),
        config.store.path.clone(),
        config.store.default_domain.clone(),
    );
    let source = Source {
        server: d.pop3.to_string(),
        security: Security::Plain,
        tls_name: None,
        ca_file: None,
    };
    let login = Login::MasterSeparator {
        master: "migrator".into(),
        separator: "*".into(),
        password: Secret::new("master-pw".into()),
    };
    let limits = Limits::default();
    let dry = migrate::migrate_user(&store, &source, &login, limits, "dove", true).await;
    assert_eq!(dry.error, None, "{dry}");
    assert_eq!(
        (dry.old_messages, dry.local_messages, dry.matched),
        (5, 4, 3)
    );
    let done = migrate::migrate_user(&store, &source, &login, limits, "dove", false).await;
    assert_eq!(done.error, None, "{done}");
    assert_eq!(done.recorded.map(|r| r.recorded), Some(3), "{done}");

    // mailbag now shows Dovecot's UIDLs for the messages Dovecot had.
    let here_uidls = uidls(here.addr, ("dove", "dove-pw")).await;
    let by_subject: HashMap<usize, String> = [1, 3, 4, 9].into_iter().zip(here_uidls).collect();
    for i in [1, 3, 4] {
        assert_eq!(by_subject[&i], dovecot_uidls[i], "message {i}");
    }
    assert!(!dovecot_uidls.contains(&by_subject[&9]));
    // Run again: everything is already recorded, nothing changes.
    let again = migrate::migrate_user(&store, &source, &login, limits, "dove", false).await;
    assert_eq!(
        again.recorded.map(|r| (r.recorded, r.kept)),
        Some((0, 3)),
        "{again}"
    );
    // A wrong master password is a clear refusal.
    let wrong = Login::MasterSeparator {
        master: "migrator".into(),
        separator: "*".into(),
        password: Secret::new("nope".into()),
    };
    let refused = migrate::migrate_user(&store, &source, &wrong, limits, "dove", true).await;
    assert!(
        refused
            .error
            .as_deref()
            .is_some_and(|e| e.contains("refused PASS")),
        "{refused}"
    );
    here.stop().await;
}

/// A fake old server: greets, accepts any login, and answers STAT, UIDL
/// and LIST with `script`'s lines (each with CRLF); RETR gets `retr`
/// without an end.
async fn hostile_server(stat: String, listing: Vec<u8>, retr: Vec<u8>) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (stat, listing, retr) = (stat.clone(), listing.clone(), retr.clone());
            tokio::spawn(async move {
                let (read, mut write) = stream.into_split();
                let mut lines = BufReader::new(read).lines();
                let _ = write.write_all(b"+OK hostile\r\n").await;
                while let Ok(Some(line)) = lines.next_line().await {
                    let reply: Vec<u8> = match line.split(' ').next().unwrap_or("") {
                        "STAT" => format!("+OK {stat}\r\n").into_bytes(),
                        "UIDL" | "LIST" => [&b"+OK\r\n"[..], &listing].concat(),
                        "RETR" => [&b"+OK\r\n"[..], &retr].concat(),
                        _ => b"+OK\r\n".to_vec(),
                    };
                    if write.write_all(&reply).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn a_hostile_old_server_is_held_to_the_bounds() {
    let here = TestServer::start().await;
    here.deliver("alice", b"x\n");
    let config = mailbag::config::Config::load(&here.config_path).unwrap();
    let store = MaildirStore::new(
        config.store.root.clone(),
        config.store.path.clone(),
        config.store.default_domain.clone(),
    );
    let login = Login::Passwords(HashMap::from([(
        "alice".to_string(),
        Secret::new("pw".to_string()),
    )]));
    let limits = Limits {
        max_messages: 10,
        max_message_octets: 1000,
        timeout: Duration::from_secs(2),
    };
    let run = |addr: SocketAddr| {
        let (store, login) = (store.clone(), login.clone());
        async move {
            let source = Source {
                server: addr.to_string(),
                security: Security::Plain,
                tls_name: None,
                ca_file: None,
            };
            migrate::migrate_user(&store, &source, &login, limits, "alice", true)
                .await
                .error
                .unwrap_or_default()
        }
    };
    let long_line = [b"1 ".to_vec(), vec![b'u'; 5000], b"\r\n.\r\n".to_vec()].concat();
    let error = run(hostile_server("1 3".into(), long_line, Vec::new()).await).await;
    assert!(error.contains("a line longer than 1024 octets"), "{error}");

    let error = run(hostile_server("11 33".into(), b".\r\n".to_vec(), Vec::new()).await).await;
    assert!(error.contains("more than --max-messages (10)"), "{error}");

    let endless = b"1 3\r\n5 3\r\n".to_vec();
    let error = run(hostile_server(
        "2 6".into(),
        [endless, b".\r\n".to_vec()].concat(),
        Vec::new(),
    )
    .await)
    .await;
    assert!(error.contains("out of range"), "{error}");

    // A message that never ends: bounded in octets, then in time.
    let huge = vec![b'x'; 4000];
    let error = run(hostile_server("1 3".into(), b"1 3\r\n.\r\n".to_vec(), huge).await).await;
    assert!(error.contains("more than --max-message-octets"), "{error}");
    let error =
        run(hostile_server("1 3".into(), b"1 3\r\n.\r\n".to_vec(), b"x\r\n".to_vec()).await).await;
    assert!(
        error.contains("no answer to RETR 1 within the deadline"),
        "{error}"
    );
    here.stop().await;
}
