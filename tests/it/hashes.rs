//! Legacy password hashes over a real socket: users whose passwd-file or
//! database rows hold MD5-CRYPT, DES crypt, yescrypt, SSHA, SHA or
//! PLAIN-MD5 values log in; with `auth.rehash_to` their secret is
//! replaced by the configured scheme after the login, in the passwd-file
//! and in mailbag's PostgreSQL schema, and only there.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use mailbag::auth::postgres::PgPassDb;
use mailbag::auth::scheme;
use mailbag::config::Config;

use crate::support::pg::{cluster, connect, pg_store, Node};
use crate::support::*;

/// Users with the password "correct horse" in legacy schemes, the
/// values made by `doveadm pw -s <SCHEME>` and `mkpasswd`.
const LEGACY_USERS: &[(&str, &str)] = &[
    ("md5user", "{MD5-CRYPT}$1$64dtHjvZ$lpFODIEh5oSgj3LFQ7iI50"),
    ("bare1", "$1$64dtHjvZ$lpFODIEh5oSgj3LFQ7iI50"),
    ("desuser", "{CRYPT}ZziV3MgI7K8nk"),
    (
        "yesuser",
        "{CRYPT}$y$j9T$p1rcoamKIpjPUPiQMlJEi0$hh0wZBC9c./R2obk40mfuehacHMfFJTW13mHZ0PBrx/",
    ),
    ("sshauser", "{SSHA}TsD40JvR9FhTuaEW6c0KMLxSefzkvbvx"),
    ("shauser", "{SHA}L55TUjtiq8FBorTWAZ0jy6g129A="),
    ("md5plain", "{PLAIN-MD5}3cb4e732631f47e6eb961f34554b7cde"),
    (
        "sha512r",
        "{SHA512-CRYPT}$6$rounds=10000$koMeZJCuEl4KkGLY$ge/uptuXcK8VTcmp5X8xvrAvFQ.0Gka4N2coOtl2ovv1A9sC5LKuuVmlVdd5IsrRqxTFhwF1ULkmFngKN9FwG.",
    ),
];
const PASSWORD: &str = "correct horse";

fn add_lines(dir: &Path, lines: &[(&str, &str)]) {
    let path = dir.join("passwd");
    let mut text = std::fs::read_to_string(&path).unwrap();
    for (user, secret) in lines {
        text.push_str(&format!("{user}:{secret}::::/var/mail/{user}\n"));
    }
    std::fs::write(&path, text).unwrap();
}

fn secret_of(dir: &Path, user: &str) -> String {
    let text = std::fs::read_to_string(dir.join("passwd")).unwrap();
    text.lines()
        .find_map(|line| {
            let mut fields = line.split(':');
            (fields.next() == Some(user)).then(|| fields.next().unwrap().to_string())
        })
        .unwrap()
}

/// Waits (bounded) until `user`'s secret is no longer `old`.
async fn wait_for_change(mut read: impl AsyncFnMut() -> String, old: &str) -> String {
    for _ in 0..400 {
        let now = read().await;
        if now != old {
            return now;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("the secret was not re-hashed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_hashes_log_in_over_a_socket_and_wrong_passwords_fail() {
    let server = TestServer::start_with_dir(|dir| {
        add_lines(dir, LEGACY_USERS);
        String::new()
    })
    .await;
    for (user, _) in LEGACY_USERS {
        let mut c = server.connect().await;
        c.line().await;
        c.ok(&format!("USER {user}")).await;
        let reply = c.cmd("PASS Correct horse").await;
        assert!(reply.starts_with("-ERR"), "{user}: {reply}");
        let mut c = server.login((user, PASSWORD)).await;
        c.ok("STAT").await;
        c.ok("QUIT").await;
    }
    // Rehash is off by default: nothing was rewritten.
    for (user, secret) in LEGACY_USERS {
        assert_eq!(&secret_of(server.dir.path(), user), secret);
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passwd_file_legacy_secrets_are_rehashed_after_login_and_others_are_not() {
    let server = TestServer::start_with_dir(|dir| {
        add_lines(dir, &LEGACY_USERS[..3]);
        "rehash_to = \"ARGON2ID\"".to_string()
    })
    .await;
    let dir = server.dir.path().to_path_buf();
    for (user, old) in &LEGACY_USERS[..3] {
        let mut c = server.login((user, PASSWORD)).await;
        c.ok("QUIT").await;
        let new = wait_for_change(async || secret_of(&dir, user), old).await;
        assert!(new.starts_with("{ARGON2ID}$argon2id$"), "{new}");
        assert!(scheme::verify(&new, PASSWORD.as_bytes()));
        // The line's other fields are kept, and the new secret logs in.
        let text = std::fs::read_to_string(dir.join("passwd")).unwrap();
        assert!(text.contains(&format!("{user}:{new}::::/var/mail/{user}\n")));
        let mut c = server.login((user, PASSWORD)).await;
        c.ok("QUIT").await;
    }
    // alice's PLAIN (which APOP needs) and bob's ARGON2ID are the
    // administrator's choices, not legacy: left alone.
    let (alice, bob) = (secret_of(&dir, ALICE.0), secret_of(&dir, BOB.0));
    server.login(ALICE).await.ok("QUIT").await;
    server.login(BOB).await.ok("QUIT").await;
    // A last legacy login afterwards, so that any rewrite of theirs
    // would have happened before this one's.
    let (user, old) = LEGACY_USERS[3];
    add_lines(&dir, &[(user, old)]);
    server.login((user, PASSWORD)).await.ok("QUIT").await;
    wait_for_change(async || secret_of(&dir, user), old).await;
    assert_eq!(secret_of(&dir, ALICE.0), alice);
    assert_eq!(secret_of(&dir, BOB.0), bob);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_legacy_login_rewrites_nothing() {
    let server = TestServer::start_with_dir(|dir| {
        add_lines(dir, &LEGACY_USERS[..1]);
        "rehash_to = \"ARGON2ID\"".to_string()
    })
    .await;
    let dir = server.dir.path().to_path_buf();
    let before = std::fs::read(dir.join("passwd")).unwrap();
    let (user, _) = LEGACY_USERS[0];
    let mut c = server.connect().await;
    c.line().await;
    c.ok(&format!("USER {user}")).await;
    assert!(c.cmd("PASS wrong").await.starts_with("-ERR"));
    // A successful login of another user, to let a background task run.
    server.login(BOB).await.ok("QUIT").await;
    assert_eq!(std::fs::read(dir.join("passwd")).unwrap(), before);
    server.stop().await;
}

#[test]
fn rehash_to_must_name_a_scheme_new_passwords_can_use() {
    let dir = tempfile::tempdir().unwrap();
    for (value, wanted) in [
        ("MD5-CRYPT", "only verified"),
        ("NOPE", "unknown password scheme"),
    ] {
        let path = dir.path().join("mailbag.toml");
        std::fs::write(
            &path,
            config_text(dir.path(), &format!("rehash_to = \"{value}\"")),
        )
        .unwrap();
        let error = Config::load(&path).unwrap_err().to_string();
        assert!(
            error.contains("auth.rehash_to") && error.contains(wanted),
            "{error}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_legacy_secrets_are_rehashed_only_while_unchanged() {
    let test = "postgres_legacy_secrets_are_rehashed_only_while_unchanged";
    let Some(cluster) = cluster(test) else {
        return;
    };
    let url = cluster.database("rehash").await;
    let db = connect(&url).await;
    for (user, secret) in &LEGACY_USERS[..4] {
        db.execute(
            "INSERT INTO users (name, secret) VALUES ($1, $2)",
            &[user, secret],
        )
        .await
        .unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mailbag.toml");
    std::fs::write(
        &path,
        format!(
            "[pop3]\nlisten = [\"127.0.0.1:0\"]\n[store]\nkind = \"postgres\"\nurl = \"{url}\"\n\
             pool_size = 4\n[auth]\nfailure_delay_ms = 10\nrehash_to = \"ARGON2ID\"\n"
        ),
    )
    .unwrap();
    let config = Config::load(&path).unwrap();
    let store = pg_store(&url);
    let passdb = PgPassDb::new(Arc::clone(store.pool()))
        .await
        .with_rehash(config.auth.rehash_scheme());
    let node = Node::start(config, store, passdb).await;
    let secret = async |user: &str| -> String {
        db.query_one("SELECT secret FROM users WHERE name = $1", &[&user])
            .await
            .unwrap()
            .get(0)
    };
    for (user, old) in &LEGACY_USERS[..3] {
        node.login((user, PASSWORD)).await.ok("QUIT").await;
        let new = wait_for_change(async || secret(user).await, old).await;
        assert!(new.starts_with("{ARGON2ID}$argon2id$"), "{new}");
        node.login((user, PASSWORD)).await.ok("QUIT").await;
    }
    let alice = secret(ALICE.0).await;
    node.login(ALICE).await.ok("QUIT").await;
    let (user, old) = LEGACY_USERS[3];
    node.login((user, PASSWORD)).await.ok("QUIT").await;
    wait_for_change(async || secret(user).await, old).await;
    assert_eq!(secret(ALICE.0).await, alice);
    node.stop().await;
}
