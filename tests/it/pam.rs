//! Issue 16: the machine's own accounts through PAM (`auth.kind =
//! "pam"`), over real sockets, with throwaway system accounts and the
//! shipped `contrib/pam.d/mailbag` installed under a name of the test's
//! own. Needs root (CI runs as root) and says so when skipped.

/// Built without the feature, a config asking for PAM is refused at
/// start with what to do, not served with some other passdb.
#[cfg(not(feature = "pam"))]
#[test]
fn without_the_pam_feature_auth_kind_pam_refuses_to_start() {
    use std::process::Command;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("mailbag.toml");
    std::fs::write(
        &config,
        format!(
            "[pop3]\nlisten = [\"127.0.0.1:0\"]\n[store]\nkind = \"mbox\"\n\
             [store.mbox]\npath = \"{}/%u\"\n[auth]\nkind = \"pam\"\n\
             secret_file = \"secret\"\n",
            dir.path().display()
        ),
    )
    .unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mailbag"));
    cmd.arg("serve").arg("--config").arg(&config);
    let out = crate::support::as_unprivileged(&mut cmd, dir.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("--features pam"), "{err}");
    let out = Command::new(env!("CARGO_BIN_EXE_mailbag"))
        .arg("check-config")
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("--features pam"), "{err}");
}
/// `mailbag deliver` with `auth.kind = "pam"` takes the machine's
/// accounts as recipients, as a PAM login does (an exact name, a UID of
/// at least `auth.pam.min_uid`), opens no passwd-file, and appends to the
/// recipient's mbox spool; anyone else is EX_NOUSER, so the MTA bounces
/// rather than queues. Needs no PAM: it works in either build.
#[test]
fn deliver_takes_system_accounts_as_recipients_into_their_spools() {
    use crate::support::accounts::{can_make_accounts, Account};
    use std::process::{Command, Stdio};
    let test = "deliver_takes_system_accounts_as_recipients_into_their_spools";
    if !can_make_accounts(test) {
        return;
    }
    let user = Account::create("dlv", "unused password", false, &[]);
    let system = Account::create("dls", "unused password", true, &[]);
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("mail")).unwrap();
    let config = dir.path().join("mailbag.toml");
    std::fs::write(
        &config,
        format!(
            "[pop3]\nlisten = [\"127.0.0.1:0\"]\n[store]\nkind = \"mbox\"\n\
             [store.mbox]\npath = \"{}/mail/%u\"\n[auth]\nkind = \"pam\"\n\
             secret_file = \"secret\"\n",
            dir.path().display()
        ),
    )
    .unwrap();
    let deliver = |to: &str| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_mailbag"));
        cmd.arg("deliver")
            .arg("--config")
            .arg(&config)
            .arg("--user")
            .arg(to)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        crate::support::as_unprivileged(&mut cmd, dir.path());
        let mut child = cmd.spawn().unwrap();
        {
            use std::io::Write;
            let mut input = child.stdin.take().unwrap();
            let _ = input.write_all(b"Subject: for a system account\n\nFrom the start\n");
        }
        let out = child.wait_with_output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, err) = deliver(&user.name);
    assert_eq!(code, Some(0), "{err}");
    let spool = std::fs::read(dir.path().join("mail").join(&user.name)).unwrap();
    let messages = mailbag::admin::import::split_mbox(&spool);
    assert_eq!(messages.len(), 1);
    assert!(spool.starts_with(b"From "));
    assert!(spool.windows(16).any(|w| w == b"\n>From the start"));
    let text = String::from_utf8_lossy(&messages[0]).into_owned();
    assert!(
        text.contains(&format!("Delivered-To: {}", user.name)),
        "{text}"
    );

    // Below auth.pam.min_uid, unknown, or spelt another way: no such user.
    for to in [
        system.name.clone(),
        "root".to_string(),
        crate::support::accounts::unique_name("none"),
        user.name.to_uppercase(),
    ] {
        let (code, err) = deliver(&to);
        assert_eq!(code, Some(67), "{to}: {err}");
        assert!(!dir.path().join("mail").join(&to).exists(), "{to}");
    }
}

#[cfg(feature = "pam")]
mod with_pam {
    use std::net::SocketAddr;
    use std::os::unix::fs::PermissionsExt;
    use std::path::Path;
    use std::process::{Child, Command, Stdio};
    use std::time::{Duration, Instant};

    use base64::Engine;
    use mailbag::auth::pam::PamPassDb;
    use mailbag::config::Config;
    use mailbag::server::Server;
    use mailbag::store::mbox::MboxStore;
    use tokio_util::sync::CancellationToken;

    use crate::support::accounts::{can_make_accounts, sweep, Account, PamService};
    use crate::support::{config_text, free_port, Client};

    const PASSWORD: &str = "correct horse 42";
    const MESSAGE: &[u8] = b"From: root@localhost\nSubject: hello\n\nspool body\n";

    /// An mbox spool for `account` in `<dir>/mail`, as Postfix writes one.
    fn spool(dir: &Path, account: &Account) {
        let mut text = b"From root@localhost Sun Dec  6 22:00:00 2026\n".to_vec();
        text.extend_from_slice(MESSAGE);
        text.push(b'\n');
        let path = dir.join("mail").join(&account.name);
        std::fs::write(&path, text).unwrap();
        let mail = nix::unistd::Group::from_name("mail").unwrap().unwrap().gid;
        std::os::unix::fs::chown(&path, Some(account.uid), Some(mail.as_raw())).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o660)).unwrap();
    }

    fn pam_config(dir: &Path, service: &str, extra: &str) -> String {
        config_text(
            dir,
            &format!(
            "{extra}\n[auth.pam]\nservice = \"{service}\"\n[store.mbox]\npath = \"{}/mail/%u\"\n",
            dir.display()
        ),
        )
        // Every refusal of the test comes from one address.
        .replace(
            "passwd_file = \"passwd\"\n",
            "kind = \"pam\"\nmax_failures_per_address = 1000\n",
        )
        .replace("[store]\n", "[store]\nkind = \"mbox\"\n")
    }

    async fn greeted(addr: SocketAddr) -> (Client, String) {
        let mut c = Client::connect(addr).await;
        let greeting = c.line().await;
        (c, greeting)
    }

    async fn user_pass(addr: SocketAddr, user: &str, password: &str) -> String {
        let (mut c, _) = greeted(addr).await;
        c.ok(&format!("USER {user}")).await;
        let answer = c.cmd(&format!("PASS {password}")).await;
        if answer.starts_with("+OK") {
            let (_, body) = c.multi("RETR 1").await;
            assert_eq!(
                body,
                crate::support::crlf(MESSAGE),
                "the spool's message, byte-exact"
            );
            c.ok("QUIT").await;
        }
        answer
    }

    async fn auth_plain(addr: SocketAddr, user: &str, password: &str) -> String {
        let (mut c, _) = greeted(addr).await;
        let token =
            base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0{password}"));
        c.cmd(&format!("AUTH PLAIN {token}")).await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn system_accounts_log_in_through_pam_and_every_refusal_looks_alike() {
        let test = "system_accounts_log_in_through_pam_and_every_refusal_looks_alike";
        if !can_make_accounts(test) {
            return;
        }
        sweep();
        let service = PamService::shipped();
        let good = Account::create("ok", PASSWORD, false, &[]);
        let low = Account::create("low", PASSWORD, true, &[]);
        let locked = Account::create("lck", PASSWORD, false, &[]);
        let expired = Account::create("exp", PASSWORD, false, &[]);
        assert!(
            low.uid < 1000 && good.uid >= 1000,
            "{} {}",
            low.uid,
            good.uid
        );

        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("mail")).unwrap();
        for account in [&good, &low, &locked, &expired] {
            spool(dir.path(), account);
        }
        let config_path = dir.path().join("mailbag.toml");
        std::fs::write(&config_path, pam_config(dir.path(), &service.name, "")).unwrap();
        let config = Config::load(&config_path).unwrap();
        let passdb = PamPassDb::new(
            &config.auth.pam.service,
            config.auth.pam.min_uid,
            Duration::from_secs(10),
        );
        let store =
            MboxStore::new(&config.store.mbox.path, config.store.mbox.lock_options()).unwrap();
        let server = Server::bind(config, store, passdb).await.unwrap();
        let addr = server.local_addrs()[0];
        let shutdown = CancellationToken::new();
        let handle = tokio::spawn(server.run(shutdown.clone()));

        // Only what PAM can check is offered: no APOP timestamp, no
        // CRAM-MD5 or SCRAM.
        let (mut c, greeting) = greeted(addr).await;
        assert!(!greeting.contains('<'), "{greeting}");
        let (_, capa) = c.multi("CAPA").await;
        let capa = String::from_utf8(capa).unwrap();
        assert!(capa.contains("SASL PLAIN LOGIN\r\n"), "{capa}");
        let (_, mechanisms) = c.multi("AUTH").await;
        assert_eq!(mechanisms, b"PLAIN\r\nLOGIN\r\n");
        assert!(c
            .cmd("APOP x 0123456789abcdef0123456789abcdef")
            .await
            .starts_with("-ERR"));

        assert!(user_pass(addr, &good.name, PASSWORD)
            .await
            .starts_with("+OK"));
        assert!(auth_plain(addr, &good.name, PASSWORD)
            .await
            .starts_with("+OK"));
        let (mut c, _) = greeted(addr).await;
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        assert!(c.cmd("AUTH LOGIN").await.starts_with("+ "));
        assert!(c.cmd(&b64(&good.name)).await.starts_with("+ "));
        assert!(c.cmd(&b64(PASSWORD)).await.starts_with("+OK"));
        c.ok("QUIT").await;
        // auth.case_insensitive_names (on by default) applies as with every
        // passdb: PAM is asked about the folded name.
        let upper = good.name.to_ascii_uppercase();
        assert!(user_pass(addr, &upper, PASSWORD).await.starts_with("+OK"));
        // Until `usermod -L` and `chage -E 0`, these two log in too.
        for account in [&locked, &expired] {
            assert!(user_pass(addr, &account.name, PASSWORD)
                .await
                .starts_with("+OK"));
        }
        locked.lock();
        expired.expire();

        // Wrong password, unknown account, a UID below the minimum, locked,
        // expired: the same answer, USER/PASS and AUTH PLAIN alike.
        let unknown = crate::support::accounts::unique_name("none");
        let refusals = [
            (good.name.as_str(), "wrong"),
            (unknown.as_str(), PASSWORD),
            (low.name.as_str(), PASSWORD),
            (locked.name.as_str(), PASSWORD),
            (expired.name.as_str(), PASSWORD),
            ("root", PASSWORD),
        ];
        let (mut by_pass, mut by_plain) = (Vec::new(), Vec::new());
        for (user, password) in refusals {
            by_pass.push((user, user_pass(addr, user, password).await));
            by_plain.push((user, auth_plain(addr, user, password).await));
        }
        for answers in [&by_pass, &by_plain] {
            for (user, answer) in answers {
                assert_eq!(answer, &answers[0].1, "{user}: {answers:?}");
            }
            assert!(answers[0].1.starts_with("-ERR [AUTH]"), "{answers:?}");
        }

        shutdown.cancel();
        let _ = handle.await;
    }

    /// Kills the server process when the test ends, passed or not.
    struct Serving(Child);

    impl Drop for Serving {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    /// A real `mailbag serve` run as `user` with group `mail` and, with
    /// `shadow`, supplementary group `shadow`, as the systemd unit in
    /// docs/DEPLOYMENT.md starts it.
    async fn serve_as(dir: &Path, service: &str, user: &Account, shadow: bool) -> (Serving, u16) {
        let port = free_port();
        let config = dir.join(format!("mailbag-{shadow}.toml"));
        let text = pam_config(dir, service, "")
            .replace(
                "listen = [\"127.0.0.1:0\"]",
                &format!("listen = [\"127.0.0.1:{port}\"]"),
            )
            .replace(
                "[auth]\n",
                &format!(
                    "[auth]\nsecret_file = \"{}/secret-{shadow}\"\n",
                    dir.display()
                ),
            );
        std::fs::write(&config, text).unwrap();
        std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).unwrap();
        let groups = if shadow { "mail,shadow" } else { "mail" };
        let log = std::fs::File::create(dir.join(format!("serve-{shadow}.log"))).unwrap();
        let child = Command::new("setpriv")
            .arg(format!("--reuid={}", user.uid))
            .arg("--regid=mail")
            .arg(format!("--groups={groups}"))
            .arg("--")
            .arg(env!("CARGO_BIN_EXE_mailbag"))
            .arg("serve")
            .arg("--config")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut serving = Serving(child);
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while tokio::net::TcpStream::connect(addr).await.is_err() {
            if let Ok(Some(status)) = serving.0.try_wait() {
                panic!(
                    "mailbag serve exited ({status}):\n{}",
                    std::fs::read_to_string(dir.join(format!("serve-{shadow}.log")))
                        .unwrap_or_default()
                );
            }
            assert!(Instant::now() < deadline, "server never came up");
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        (serving, port)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_unprivileged_server_checks_passwords_only_in_group_shadow() {
        let test = "an_unprivileged_server_checks_passwords_only_in_group_shadow";
        if !can_make_accounts(test) {
            return;
        }
        sweep();
        let service = PamService::shipped();
        let server_user = Account::create("svc", PASSWORD, true, &[]);
        let good = Account::create("usr", PASSWORD, false, &[]);
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        // The spool directory as on Debian: root:mail 2775.
        let mail_dir = dir.path().join("mail");
        std::fs::create_dir(&mail_dir).unwrap();
        let mail = nix::unistd::Group::from_name("mail").unwrap().unwrap().gid;
        std::os::unix::fs::chown(&mail_dir, Some(0), Some(mail.as_raw())).unwrap();
        std::fs::set_permissions(&mail_dir, std::fs::Permissions::from_mode(0o2775)).unwrap();
        spool(dir.path(), &good);

        // In group shadow, pam_unix reads /etc/shadow itself: any user.
        let (serving, port) = serve_as(dir.path(), &service.name, &server_user, true).await;
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        assert!(
            user_pass(addr, &good.name, PASSWORD)
                .await
                .starts_with("+OK"),
            "{}",
            std::fs::read_to_string(dir.path().join("serve-true.log")).unwrap_or_default()
        );
        assert!(user_pass(addr, &good.name, "wrong")
            .await
            .starts_with("-ERR"));
        drop(serving);

        // Without it, pam_unix falls back to unix_chkpwd, which checks only
        // the password of the user running it: every other login fails,
        // whatever the password.
        let (serving, port) = serve_as(dir.path(), &service.name, &server_user, false).await;
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        assert!(user_pass(addr, &good.name, PASSWORD)
            .await
            .starts_with("-ERR"));
        drop(serving);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_pam_stack_that_hangs_is_a_temporary_failure_not_a_stuck_session() {
        let test = "a_pam_stack_that_hangs_is_a_temporary_failure_not_a_stuck_session";
        if !can_make_accounts(test) {
            return;
        }
        sweep();
        // A module that never answers in time (a network module whose
        // server is gone): pam_exec running sleep.
        let service = PamService::with_text(
            "auth required pam_exec.so /bin/sleep 5\naccount required pam_permit.so\n",
        );
        let good = Account::create("hng", PASSWORD, false, &[]);
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("mail")).unwrap();
        let config_path = dir.path().join("mailbag.toml");
        std::fs::write(&config_path, pam_config(dir.path(), &service.name, "")).unwrap();
        let config = Config::load(&config_path).unwrap();
        let passdb = PamPassDb::new(&config.auth.pam.service, 1000, Duration::from_millis(300));
        let store =
            MboxStore::new(&config.store.mbox.path, config.store.mbox.lock_options()).unwrap();
        let server = Server::bind(config, store, passdb).await.unwrap();
        let addr = server.local_addrs()[0];
        let shutdown = CancellationToken::new();
        let handle = tokio::spawn(server.run(shutdown.clone()));

        let (mut c, _) = greeted(addr).await;
        c.ok(&format!("USER {}", good.name)).await;
        let answer = c.cmd(&format!("PASS {PASSWORD}")).await;
        assert!(answer.starts_with("-ERR [SYS/TEMP]"), "{answer}");
        // The server still answers other sessions meanwhile.
        let (mut other, greeting) = greeted(addr).await;
        assert!(greeting.starts_with("+OK"));
        let (_, capa) = other.multi("CAPA").await;
        assert!(!capa.is_empty());
        shutdown.cancel();
        let _ = handle.await;
    }

    #[test]
    fn check_config_wants_the_pam_service_file_and_no_passwd_file() {
        let test = "check_config_wants_the_pam_service_file_and_no_passwd_file";
        if !can_make_accounts(test) {
            return;
        }
        let service = PamService::shipped();
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("mail")).unwrap();
        let check = |service: &str| {
            let config = dir.path().join("mailbag.toml");
            std::fs::write(&config, pam_config(dir.path(), service, "")).unwrap();
            Command::new(env!("CARGO_BIN_EXE_mailbag"))
                .arg("check-config")
                .arg("--config")
                .arg(&config)
                .output()
                .unwrap()
        };
        let out = check(&service.name);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let missing = crate::support::accounts::unique_name("none");
        let out = check(&missing);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(
            err.contains("auth.pam.service") && err.contains(&missing),
            "{err}"
        );
    }

    /// check-config warns when the server's user cannot read /etc/shadow:
    /// `pam_unix` then relies on `unix_chkpwd`, which checks only the
    /// password of the user running it. In group shadow, no warning.
    #[test]
    fn check_config_warns_when_pam_cannot_check_other_accounts_passwords() {
        use std::os::unix::process::CommandExt;
        let test = "check_config_warns_when_pam_cannot_check_other_accounts_passwords";
        if !can_make_accounts(test) {
            return;
        }
        let service = PamService::shipped();
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("mail")).unwrap();
        let config = dir.path().join("mailbag.toml");
        std::fs::write(&config, pam_config(dir.path(), &service.name, "")).unwrap();
        let check = |group: Option<&str>| {
            let mut cmd = Command::new(env!("CARGO_BIN_EXE_mailbag"));
            cmd.arg("check-config").arg("--config").arg(&config);
            crate::support::as_unprivileged(&mut cmd, dir.path());
            if let Some(group) = group {
                let gid = nix::unistd::Group::from_name(group).unwrap().unwrap().gid;
                cmd.gid(gid.as_raw());
            }
            let out = cmd.output().unwrap();
            (
                out.status.success(),
                String::from_utf8_lossy(&out.stdout).into_owned(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            )
        };
        let (ok, out, err) = check(None);
        assert!(ok, "{err}");
        assert!(
            out.contains("warning: auth.kind = \"pam\"")
                && out.contains("cannot read /etc/shadow")
                && out.contains("unix_chkpwd")
                && out.contains("SupplementaryGroups=shadow"),
            "{out}"
        );
        let (ok, out, err) = check(Some("shadow"));
        assert!(ok, "{err}");
        assert!(!out.contains("warning"), "{out}");
    }
}
