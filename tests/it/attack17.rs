//! The password databases mailbag does not own (LDAP, the administrator's
//! SQL query, PAM), attacked from a client's side: existence leaks,
//! waits past their deadlines.

#[cfg(feature = "pam")]
mod pam {
    use std::os::unix::fs::PermissionsExt;
    use std::time::Duration;

    use mailbag::auth::pam::{PamPassDb, CONVERSATIONS};
    use mailbag::config::Config;
    use mailbag::server::Server;
    use mailbag::store::mbox::MboxStore;
    use tokio_util::sync::CancellationToken;

    use crate::support::accounts::{can_make_accounts, sweep, Account, PamService};
    use crate::support::{config_text, Client};

    const PASSWORD: &str = "correct horse 42";

    /// With every PAM conversation held by a stack that hangs, a further
    /// login gets `[SYS/TEMP]` at the PAM deadline; it does not wait for a
    /// stuck conversation to return.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn pam_logins_behind_stuck_conversations_fail_at_the_pam_deadline() {
        let test = "pam_logins_behind_stuck_conversations_fail_at_the_pam_deadline";
        if !can_make_accounts(test) {
            return;
        }
        sweep();
        // Each conversation stays stuck a while, then leaves a mark as it
        // returns (and frees its slot).
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("stuck.sh");
        let returned = dir.path().join("returned");
        std::fs::write(
            &script,
            format!("#!/bin/sh\nsleep 6\ntouch {}\n", returned.display()),
        )
        .unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        let service = PamService::with_text(&format!(
            "auth required pam_exec.so {}\naccount required pam_permit.so\n",
            script.display()
        ));
        let account = Account::create("stk", PASSWORD, false, &[]);
        std::fs::create_dir(dir.path().join("mail")).unwrap();
        let text = config_text(
            dir.path(),
            &format!(
                "[auth.pam]\nservice = \"{}\"\n[limits]\nauthorization_timeout_secs = 60\n\
                 [store.mbox]\npath = \"{}/mail/%u\"\n",
                service.name,
                dir.path().display()
            ),
        )
        .replace(
            "passwd_file = \"passwd\"\n",
            "kind = \"pam\"\nmax_failures_per_address = 1000\n",
        )
        .replace("[store]\n", "[store]\nkind = \"mbox\"\n");
        let config_path = dir.path().join("mailbag.toml");
        std::fs::write(&config_path, text).unwrap();
        let config = Config::load(&config_path).unwrap();
        let passdb = PamPassDb::new(&config.auth.pam.service, 1000, Duration::from_millis(300));
        let store =
            MboxStore::new(&config.store.mbox.path, config.store.mbox.lock_options()).unwrap();
        let server = Server::bind(config, store, passdb).await.unwrap();
        let addr = server.local_addrs()[0];
        let shutdown = CancellationToken::new();
        let handle = tokio::spawn(server.run(shutdown.clone()));

        async fn login(addr: std::net::SocketAddr, user: String) -> String {
            let mut c = Client::connect(addr).await;
            assert!(c.line().await.starts_with("+OK"));
            c.ok(&format!("USER {user}")).await;
            c.cmd(&format!("PASS {PASSWORD}")).await
        }
        // Every slot taken by a conversation that will not return.
        let stuck: Vec<_> = (0..CONVERSATIONS)
            .map(|_| tokio::spawn(login(addr, account.name.clone())))
            .collect();
        for answer in stuck {
            let answer = answer.await.unwrap();
            assert!(answer.starts_with("-ERR [SYS/TEMP]"), "{answer}");
        }
        // One more login: answered at the PAM deadline, before any stuck
        // conversation returns to free a slot.
        let answer = login(addr, account.name.clone()).await;
        assert!(answer.starts_with("-ERR [SYS/TEMP]"), "{answer:?}");
        assert!(
            !returned.exists(),
            "the login waited for a stuck conversation to return"
        );
        shutdown.cancel();
        let _ = handle.await;
    }
}

/// The administrator's SQL query on a real PostgreSQL.
mod sql {
    use mailbag::auth::scheme::{hash, Scheme};
    use mailbag::auth::sql::SqlPassDb;
    use mailbag::auth::PassDb;
    use mailbag::config::Config;
    use mailbag::store::maildir::MaildirStore;

    use crate::support::pg::{cluster, connect, Node};

    const AUTH_FAILED: &str = "-ERR [AUTH] Authentication failed";

    /// A row whose password or name is NULL (an account kept without a
    /// password, a hand-made table) is answered as an unknown user is,
    /// as MariaDB's NULLs already were: never `[SYS/TEMP]` for a name
    /// that exists only, which would tell who has an account.
    #[tokio::test]
    async fn postgres_null_passwords_and_names_answer_as_unknown_users_do() {
        let test = "attack17_postgres_nulls";
        let Some(cluster) = cluster(test) else {
            return;
        };
        let url = cluster.database(test).await;
        let client = connect(&url).await;
        let stored = hash(Scheme::Sha512Crypt, b"wonderland").unwrap();
        client
            .batch_execute(
                "CREATE TABLE people (username TEXT PRIMARY KEY, login TEXT, password TEXT)",
            )
            .await
            .unwrap();
        for (username, login, password) in [
            (
                "alice@example.org",
                Some("alice@example.org"),
                Some(&stored),
            ),
            ("nopass@example.org", Some("nopass@example.org"), None),
            ("noname@example.org", None, Some(&stored)),
        ] {
            client
                .execute(
                    "INSERT INTO people VALUES ($1, $2, $3)",
                    &[&username, &login, &password],
                )
                .await
                .unwrap();
        }
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            "[pop3]\nlisten = [\"127.0.0.1:0\"]\n[store]\nroot = \"mail\"\n\
             [auth]\nfailure_delay_ms = 10\nmax_failures_per_address = 100\n\
             [auth.sql]\nurl = \"{url}\"\n\
             password_query = \"SELECT login AS user, password FROM people WHERE username = $1\"\n"
        );
        let config = Config::parse(&text, dir.path()).unwrap();
        let passdb = SqlPassDb::new(config.auth.sql.as_ref().unwrap()).unwrap();
        // A NULL password is no secret, but its user exists (mail is
        // still delivered to it).
        assert_eq!(
            passdb
                .user_exists("nopass@example.org")
                .await
                .unwrap()
                .as_deref(),
            Some("nopass@example.org")
        );
        let store = MaildirStore::new(
            config.store.root.clone(),
            config.store.path.clone(),
            config.store.default_domain.clone(),
        );
        let node = Node::start(config, store, passdb).await;
        assert!(node
            .try_login(("alice@example.org", "wonderland"))
            .await
            .1
            .starts_with("+OK"));
        let wrong = node.try_login(("alice@example.org", "nope")).await.1;
        assert!(wrong.starts_with(AUTH_FAILED), "{wrong}");
        for (user, password) in [
            ("nobody@example.org", "nope"),
            ("nopass@example.org", "nope"),
            ("noname@example.org", "wonderland"),
        ] {
            let reply = node.try_login((user, password)).await.1;
            assert_eq!(reply, wrong, "{user}");
        }
    }
}

/// Bearer tokens checked against keys fetched from a JWKS URL.
mod oauth {
    use base64::prelude::{Engine as _, BASE64_STANDARD};

    use crate::support::TestServer;
    use crate::tls::implicit;

    const CHECKS: usize = 12;

    /// While the key server takes connections and never answers, checks
    /// made at once each end at their own `timeout_ms` (300 ms) with
    /// `[SYS/TEMP]`. Fetching in turn, each would wait out the fetches
    /// before it (the twelfth 3.6 s), and the later ones would reach the
    /// 2 s login deadline first.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn logins_while_the_key_server_hangs_end_at_their_own_deadline() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let hung = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((tcp, _)) = listener.accept().await {
                held.push(tcp);
            }
        });
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        mailbag::server::tls::write_self_signed(&["localhost"], &cert, &key).unwrap();
        let server = TestServer::start_tls(&format!(
            "max_failures_per_address = 100\n[auth.oauth]\n\
             jwks_url = \"https://localhost:{port}/jwks.json\"\nca_file = \"{}\"\n\
             issuer = \"https://idp.example.test\"\naudience = \"mailbag\"\ntimeout_ms = 300\n\
             [limits]\nauthorization_timeout_secs = 2\n",
            cert.display()
        ))
        .await;
        // Every client waits at the challenge, then all send at once.
        let mut clients = Vec::new();
        for _ in 0..CHECKS {
            let mut c = implicit(&server).await;
            assert_eq!(c.cmd("AUTH OAUTHBEARER").await, "+ \r\n");
            clients.push(c);
        }
        let message = BASE64_STANDARD
            .encode("n,,\x01host=localhost\x01port=995\x01auth=Bearer a.b.c\x01\x01");
        let answers: Vec<_> = clients
            .into_iter()
            .map(|mut c| {
                let message = message.clone();
                tokio::spawn(async move { c.cmd(&message).await })
            })
            .collect();
        for answer in answers {
            let answer = answer.await.unwrap();
            assert!(answer.starts_with("-ERR [SYS/TEMP]"), "{answer}");
            assert!(
                !answer.contains("without logging in"),
                "a check waited for others' fetches past the login deadline: {answer}"
            );
        }
        hung.abort();
        server.stop().await;
    }
}
