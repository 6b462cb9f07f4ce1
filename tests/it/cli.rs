//! The `mailbag` binary: demo, serve, check-config and user management,
//! run as a user would run them.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::support::*;

fn mailbag() -> Command {
    Command::new(env!("CARGO_BIN_EXE_mailbag"))
}

/// `mailbag` for a test whose config, users and mail are in `dir`: as
/// nobody when the tests run as root (see [`unprivileged`]).
fn mailbag_in(dir: &Path) -> Command {
    let mut cmd = mailbag();
    as_unprivileged(&mut cmd, dir);
    cmd
}

/// Starts `mailbag serve` on a free port with the test config in `dir`.
fn spawn_serve(dir: &Path) -> (Child, SocketAddr) {
    let port = free_port();
    let text = config_text(dir, "").replace("127.0.0.1:0", &format!("127.0.0.1:{port}"));
    std::fs::write(dir.join("mailbag.toml"), text).unwrap();
    let child = mailbag_in(dir)
        .arg("serve")
        .arg("--config")
        .arg(dir.join("mailbag.toml"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    (child, addr)
}

async fn connect_retrying(addr: SocketAddr) -> Client {
    for _ in 0..200 {
        if let Ok(s) = tokio::net::TcpStream::connect(addr).await {
            return Client {
                stream: tokio::io::BufReader::new(s),
            };
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("server at {addr} never came up");
}

async fn login(addr: SocketAddr, user: (&str, &str)) -> (Client, String) {
    let mut c = connect_retrying(addr).await;
    c.line().await;
    c.ok(&format!("USER {}", user.0)).await;
    let reply = c.cmd(&format!("PASS {}", user.1)).await;
    (c, reply)
}

#[tokio::test]
async fn lock_is_released_when_the_server_process_is_killed() {
    let dir = tempfile::tempdir().unwrap();
    write_passwd(dir.path());
    let maildir = dir.path().join("mail/localhost/alice/Maildir");
    mailbag::store::maildir::deliver(&maildir, b"Subject: x\n\nbody\n").unwrap();
    let (mut child, addr) = spawn_serve(dir.path());
    let (mut c, reply) = login(addr, ALICE).await;
    assert!(reply.starts_with("+OK"), "{reply}");
    c.ok("DELE 1").await;
    child.kill().unwrap(); // SIGKILL: no cleanup code runs
    child.wait().unwrap();
    let (mut child, addr) = spawn_serve(dir.path());
    let (mut c, reply) = login(addr, ALICE).await;
    assert!(
        reply.starts_with("+OK Logged in. Maildrop has 1 message"),
        "{reply}"
    );
    c.ok("QUIT").await;
    child.kill().unwrap();
    child.wait().unwrap();
}

#[tokio::test]
async fn user_add_takes_effect_without_restart() {
    let s = TestServer::start().await;
    let status = run_with_stdin(
        mailbag_in(s.dir.path())
            .args(["user", "add", "carol", "--password-stdin", "--config"])
            .arg(&s.config_path),
        "s3cret pass\n",
    );
    assert!(status.success());
    let passwd = std::fs::read_to_string(s.dir.path().join("passwd")).unwrap();
    assert!(passwd.contains("carol:{ARGON2ID}$argon2id$"), "{passwd}");
    assert!(!passwd.contains("s3cret"));
    let mut c = s.login(("carol", "s3cret pass")).await;
    c.ok("STAT").await;
    c.ok("QUIT").await;

    let status = run_with_stdin(
        mailbag_in(s.dir.path())
            .args(["user", "passwd", "carol", "--password-stdin", "--config"])
            .arg(&s.config_path),
        "changed\n",
    );
    assert!(status.success());
    let mut c = s.connect().await;
    c.line().await;
    c.ok("USER carol").await;
    assert!(c.cmd("PASS s3cret pass").await.starts_with("-ERR [AUTH]"));
    c.ok("USER carol").await;
    c.ok("PASS changed").await;
    c.ok("QUIT").await;

    let out = mailbag_in(s.dir.path())
        .args(["user", "list", "--config"])
        .arg(&s.config_path)
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "alice\nbob\ncarol\n");
    let status = mailbag_in(s.dir.path())
        .args(["user", "del", "carol", "--config"])
        .arg(&s.config_path)
        .status()
        .unwrap();
    assert!(status.success());
    let mut c = s.connect().await;
    c.line().await;
    c.ok("USER carol").await;
    assert!(c.cmd("PASS changed").await.starts_with("-ERR [AUTH]"));
    s.stop().await;
}

#[tokio::test]
async fn user_add_writes_dovecot_scram_sha_256_values_that_log_in() {
    let s = TestServer::start().await;
    let status = run_with_stdin(
        mailbag_in(s.dir.path())
            .args([
                "user",
                "add",
                "dave",
                "--scheme",
                "SCRAM-SHA-256",
                "--password-stdin",
                "--config",
            ])
            .arg(&s.config_path),
        "pencil\n",
    );
    assert!(status.success());
    let passwd = std::fs::read_to_string(s.dir.path().join("passwd")).unwrap();
    let line = passwd.lines().find(|l| l.starts_with("dave:")).unwrap();
    // Dovecot's layout: iterations,salt,StoredKey,ServerKey in base64.
    let data = line.strip_prefix("dave:{SCRAM-SHA-256}4096,").unwrap();
    assert_eq!(data.split(',').count(), 3, "{line}");
    let mut c = s.login(("dave", "pencil")).await;
    c.ok("QUIT").await;
    s.stop().await;
}

#[test]
fn user_add_refuses_bad_names_and_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    write_passwd(dir.path());
    std::fs::write(dir.path().join("mailbag.toml"), config_text(dir.path(), "")).unwrap();
    for name in ["../etc", "a/b", "with space", "a:b", ".hidden"] {
        let out = mailbag_in(dir.path())
            .args(["user", "add", name, "--password-stdin", "--config"])
            .arg(dir.path().join("mailbag.toml"))
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(!out.status.success(), "{name} was accepted");
    }
    let status = run_with_stdin(
        mailbag_in(dir.path())
            .args(["user", "add", "alice", "--password-stdin", "--config"])
            .arg(dir.path().join("mailbag.toml")),
        "x\n",
    );
    assert!(!status.success());
}

#[test]
fn bad_config_is_refused_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    write_passwd(dir.path());
    let path = dir.path().join("mailbag.toml");
    std::fs::write(&path, config_text(dir.path(), "max_failurez = 3")).unwrap();
    for sub in ["check-config", "serve"] {
        let out = mailbag()
            .arg(sub)
            .arg("--config")
            .arg(&path)
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("max_failurez"), "{sub}: {err}");
    }
    std::fs::write(&path, config_text(dir.path(), "")).unwrap();
    let out = mailbag()
        .arg("check-config")
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn check_config_refuses_an_endless_failure_delay() {
    let dir = tempfile::tempdir().unwrap();
    write_passwd(dir.path());
    let path = dir.path().join("mailbag.toml");
    let text = config_text(
        dir.path(),
        "failure_delay_ms = 10\nmax_failure_delay_ms = 9223372036854775807",
    );
    std::fs::write(&path, text).unwrap();
    let out = mailbag()
        .arg("check-config")
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("auth.max_failure_delay_ms"), "{err}");
}

#[test]
fn check_config_loads_the_tls_certificate_and_names_the_key() {
    let dir = tempfile::tempdir().unwrap();
    write_passwd(dir.path());
    let path = dir.path().join("mailbag.toml");
    let text =
        config_text(dir.path(), "") + "[tls]\ncertificate = \"missing.pem\"\nkey = \"key.pem\"\n";
    std::fs::write(&path, text).unwrap();
    let out = mailbag()
        .arg("check-config")
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("tls.certificate") && err.contains("missing.pem"),
        "{err}"
    );
}

#[test]
fn example_config_in_the_repository_is_valid() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("mailbag.example.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    mailbag::config::Config::parse(&text, Path::new("/etc/mailbag")).unwrap();
}

#[tokio::test]
async fn demo_serves_the_demo_user_and_reuses_its_directory() {
    let dir = tempfile::tempdir().unwrap();
    let demo_dir = dir.path().join("demo");
    // The demo runs as whoever starts it, root included.
    let mut child = mailbag()
        .args(["demo", "--dir"])
        .arg(&demo_dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let addr: SocketAddr = "127.0.0.1:1110".parse().unwrap();
    let (mut c, reply) = login(addr, ("demo", "demo")).await;
    assert!(
        reply.starts_with("+OK Logged in. Maildrop has 5 messages"),
        "{reply}"
    );
    let (_, body) = c.multi("RETR 1").await;
    assert!(String::from_utf8_lossy(&body).contains("Welcome"));
    c.ok("QUIT").await;
    // The demo takes mail over LMTP, as its printed swaks line does.
    let mut l = connect_retrying("127.0.0.1:2424".parse().unwrap()).await;
    assert!(l.line().await.starts_with("220 "));
    l.send(
        b"LHLO c\r\nMAIL FROM:<me@example.org>\r\nRCPT TO:<demo@localhost>\r\nDATA\r\n\
          Subject: sent to the demo\r\n\r\nhi\r\n.\r\nQUIT\r\n",
    )
    .await;
    let mut delivered = false;
    loop {
        let line = l.line().await;
        delivered |= line == "250 2.0.0 <demo@localhost> delivered\r\n";
        if line.is_empty() || line.starts_with("221") {
            break;
        }
    }
    assert!(delivered);
    let (mut c, reply) = login(addr, ("demo", "demo")).await;
    assert!(
        reply.starts_with("+OK Logged in. Maildrop has 6 messages"),
        "{reply}"
    );
    c.ok("QUIT").await;
    // TLS out of the box: STLS on 1110 (openssl) and implicit TLS on 1995
    // (curl), with the generated self-signed certificate.
    let out = tokio::process::Command::new("openssl")
        .args([
            "s_client",
            "-quiet",
            "-crlf",
            "-starttls",
            "pop3",
            "-connect",
            "127.0.0.1:1110",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut openssl = out;
    {
        use tokio::io::AsyncWriteExt;
        let mut stdin = openssl.stdin.take().unwrap();
        stdin
            .write_all(b"USER demo\nPASS demo\nQUIT\n")
            .await
            .unwrap();
    }
    let out = tokio::time::timeout(Duration::from_secs(20), openssl.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("+OK Logged in. Maildrop has 6 messages"),
        "{text}"
    );
    let out = tokio::process::Command::new("curl")
        .args([
            "--silent",
            "--insecure",
            "--user",
            "demo:demo",
            "pop3s://127.0.0.1:1995/1",
        ])
        .output()
        .await
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("Welcome"));
    child.kill().unwrap();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("telnet 127.0.0.1 1110"), "{text}");
    assert!(
        text.contains("swaks --server 127.0.0.1:2424 --protocol LMTP --to demo@localhost"),
        "{text}"
    );
    assert!(text.contains("-starttls pop3"), "{text}");
    assert!(text.contains("pop3s://demo:demo@127.0.0.1:1995"), "{text}");
    assert!(demo_dir.join("tls/cert.pem").exists());
    assert!(text.contains("password: demo"), "{text}");
    assert!(demo_dir.join("mailbag.toml").exists());
    // Everything stays inside the demo directory.
    let entries: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert_eq!(entries.len(), 1);
    // The config it wrote serves the same data with `mailbag serve`.
    let mut command = mailbag();
    let out = as_unprivileged(&mut command, dir.path())
        .arg("check-config")
        .arg("--config")
        .arg(demo_dir.join("mailbag.toml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn run_with_stdin(cmd: &mut Command, input: &str) -> std::process::ExitStatus {
    use std::io::Write;
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    child.wait().unwrap()
}

#[tokio::test]
async fn failed_logins_log_one_line_that_the_fail2ban_filter_matches() {
    let dir = tempfile::tempdir().unwrap();
    write_passwd(dir.path());
    let port = free_port();
    let text = config_text(dir.path(), "").replace("127.0.0.1:0", &format!("127.0.0.1:{port}"));
    std::fs::write(dir.path().join("mailbag.toml"), text).unwrap();
    let log_path = dir.path().join("mailbag.log");
    let mut child = mailbag_in(dir.path())
        .arg("serve")
        .arg("--config")
        .arg(dir.path().join("mailbag.toml"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let (mut c, reply) = login(addr, ("alice", "wrong password")).await;
    assert!(reply.starts_with("-ERR [AUTH]"));
    c.ok("USER nobody ").await;
    assert!(c.cmd("PASS x").await.starts_with("-ERR [AUTH]"));
    c.ok("USER alice").await;
    c.ok("PASS wonderland").await;
    c.ok("QUIT").await;
    child.kill().unwrap();
    child.wait().unwrap();
    let log = std::fs::read_to_string(&log_path).unwrap();
    let failures: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("authentication failed"))
        .collect();
    assert_eq!(failures.len(), 2, "{log}");
    assert!(failures[0].contains("mailbag::auth: authentication failed: rip=127.0.0.1 user=alice reason=invalid-credentials service=pop3"), "{log}");
    assert!(
        !log.contains("wrong password") && !log.contains("wonderland"),
        "a password reached the log:\n{log}"
    );
    assert!(!log.contains('\x1b'), "colour codes in a log file");

    let filter =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib/fail2ban/filter.d/mailbag.conf");
    if Command::new("fail2ban-regex")
        .arg("--version")
        .output()
        .is_err()
    {
        assert!(
            std::env::var_os("CI").is_none(),
            "fail2ban-regex is required in CI"
        );
        eprintln!("SKIPPED: fail2ban-regex is not installed");
        return;
    }
    let out = Command::new("fail2ban-regex")
        .arg(&log_path)
        .arg(&filter)
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{report}");
    let matched = report
        .lines()
        .find(|l| l.starts_with("Lines:"))
        .unwrap_or_default()
        .to_string();
    assert!(matched.contains(", 2 matched,"), "{report}");
    assert!(report.contains("127.0.0.1"), "{report}");
}

fn chown_tree(path: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::chown(path, Some(uid), Some(gid)).unwrap();
    if path.is_dir() {
        for e in std::fs::read_dir(path).unwrap() {
            chown_tree(&e.unwrap().path(), uid, gid);
        }
    }
}

#[tokio::test]
async fn serve_started_as_root_binds_then_runs_as_the_configured_user() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIPPED: needs root to switch users");
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let nobody = nix::unistd::User::from_name("nobody")
        .unwrap()
        .expect("user nobody");
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    write_passwd(dir.path());
    let maildir = dir.path().join("mail/localhost/alice/Maildir");
    mailbag::store::maildir::deliver(&maildir, b"Subject: x\n\nbody\n").unwrap();
    chown_tree(dir.path(), nobody.uid.as_raw(), nobody.gid.as_raw());
    let port = free_port();
    let text = config_text(dir.path(), "\n[server]\nuser = \"nobody\"\n")
        .replace("127.0.0.1:0", &format!("127.0.0.1:{port}"));
    std::fs::write(dir.path().join("mailbag.toml"), text).unwrap();
    let mut child = mailbag()
        .arg("serve")
        .arg("--config")
        .arg(dir.path().join("mailbag.toml"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let (mut c, reply) = login(addr, ALICE).await;
    assert!(
        reply.starts_with("+OK Logged in. Maildrop has 1 message"),
        "{reply}"
    );
    c.multi("RETR 1").await;
    c.ok("DELE 1").await;
    c.ok("QUIT").await;
    let status = std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap();
    let uids = status
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .unwrap()
        .to_string();
    child.kill().unwrap();
    child.wait().unwrap();
    let want = nobody.uid.as_raw().to_string();
    assert!(
        uids.split_whitespace().skip(1).all(|u| u == want),
        "still privileged: {uids}"
    );
    assert_eq!(std::fs::read_dir(maildir.join("new")).unwrap().count(), 0);
}

#[test]
fn serve_refuses_to_run_as_root_after_the_switch() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIPPED: needs root");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    write_passwd(dir.path());
    let path = dir.path().join("mailbag.toml");
    std::fs::write(
        &path,
        config_text(dir.path(), "\n[server]\nuser = \"root\"\n"),
    )
    .unwrap();
    let out = mailbag()
        .arg("serve")
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("refusing to run as root"), "{err}");
}

#[tokio::test]
async fn sighup_reloads_limits_without_dropping_sessions() {
    let dir = tempfile::tempdir().unwrap();
    write_passwd(dir.path());
    let port = free_port();
    let config = |per_address: u32| {
        config_text(
            dir.path(),
            &format!("\n[limits]\nmax_connections_per_address = {per_address}\n"),
        )
        .replace("127.0.0.1:0", &format!("127.0.0.1:{port}"))
    };
    let path = dir.path().join("mailbag.toml");
    std::fs::write(&path, config(1)).unwrap();
    let mut child = mailbag_in(dir.path())
        .arg("serve")
        .arg("--config")
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let (mut first, reply) = login(addr, ALICE).await;
    assert!(reply.starts_with("+OK"), "{reply}");
    let mut second = connect_retrying(addr).await;
    assert!(second
        .line()
        .await
        .starts_with("-ERR [SYS/TEMP] Too many connections from your address"));

    let hup = || {
        let status = Command::new("kill")
            .args(["-HUP", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    };
    std::fs::write(&path, config(3)).unwrap();
    hup();
    let mut admitted = false;
    for _ in 0..100 {
        let mut c = connect_retrying(addr).await;
        if c.line().await.starts_with("+OK") {
            admitted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(admitted, "the new limit never applied");
    // The session from before the reload goes on.
    first.ok("STAT").await;

    // A broken config is refused and the running one kept.
    std::fs::write(&path, "this is not toml [").unwrap();
    hup();
    tokio::time::sleep(Duration::from_millis(300)).await;
    first.ok("NOOP").await;
    let mut c = connect_retrying(addr).await;
    assert!(c.line().await.starts_with("+OK"));
    child.kill().unwrap();
    child.wait().unwrap();
}

/// A PostgreSQL store that cannot be reached is named by the setting the
/// operator wrote: `store.url`, or `store.clusters` when there are
/// several.
#[test]
fn an_unreachable_database_is_named_by_the_setting_that_gives_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mailbag.toml");
    // A port nothing listens on.
    let port = free_port();
    let url = format!("host=127.0.0.1 port={port} user=nobody dbname=none connect_timeout=2");
    let one = format!("[store]\nkind = \"postgres\"\nurl = \"{url}\"\n");
    let several = format!(
        "[store]\nkind = \"postgres\"\n\
         [[store.clusters]]\nname = \"a\"\nurl = \"{url}\"\n\
         [[store.clusters]]\nname = \"b\"\nurl = \"{url}\"\n"
    );
    for (text, setting) in [(one, "store.url"), (several, "store.clusters")] {
        std::fs::write(
            &path,
            format!("[pop3]\nlisten = [\"127.0.0.1:0\"]\n{text}[auth]\n"),
        )
        .unwrap();
        let out = mailbag()
            .arg("check-config")
            .arg("--config")
            .arg(&path)
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(&format!("{setting}:")), "{setting}: {err}");
    }
}
