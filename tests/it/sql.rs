//! The SQL passdb with the administrator's own query, against
//! PostfixAdmin's `mailbox` table on a real MariaDB and a real
//! PostgreSQL, its passwords in the schemes PostfixAdmin writes.

use std::time::Duration;

use mailbag::auth::scheme::{hash, Scheme};
use mailbag::auth::sql::SqlPassDb;
use mailbag::auth::{AuthError, Credential, PassDb};
use mailbag::config::Config;
use mailbag::store::maildir::MaildirStore;
use mailbag_proto::secret::Secret;
use tempfile::TempDir;

use crate::support::pg::{cluster, connect, Node};
use crate::support::Client;

const AUTH_FAILED: &str = "-ERR [AUTH] Authentication failed";
const TEMP: &str = "-ERR [SYS/TEMP]";

/// PostfixAdmin's table, as its setup.php creates it (the columns that
/// matter here), for both databases.
const MAILBOX: &str = "CREATE TABLE mailbox (
    username VARCHAR(255) NOT NULL PRIMARY KEY,
    password VARCHAR(255) NOT NULL,
    name VARCHAR(255) NOT NULL DEFAULT '',
    maildir VARCHAR(255) NOT NULL DEFAULT '',
    quota BIGINT NOT NULL DEFAULT 0,
    local_part VARCHAR(255) NOT NULL,
    domain VARCHAR(255) NOT NULL,
    active SMALLINT NOT NULL DEFAULT 1)";

/// (user, password, stored as PostfixAdmin writes it, active).
fn users() -> Vec<(&'static str, &'static str, String, i32)> {
    let argon2i = {
        use argon2::PasswordHasher;
        let hasher = argon2::Argon2::new(
            argon2::Algorithm::Argon2i,
            argon2::Version::V0x13,
            argon2::Params::new(4096, 3, 1, None).unwrap(),
        );
        format!("{{ARGON2I}}{}", hasher.hash_password(b"ice").unwrap())
    };
    vec![
        // dovecot:SHA512-CRYPT
        (
            "alice@example.org",
            "wonderland",
            hash(Scheme::Sha512Crypt, b"wonderland").unwrap(),
            1,
        ),
        // dovecot:BLF-CRYPT
        (
            "bob@example.org",
            "builder",
            hash(Scheme::BlfCrypt, b"builder").unwrap(),
            1,
        ),
        // a bare crypt hash ($6$, as `encrypt = 'sha512.crypt'` keeps it)
        (
            "carol@example.org",
            "singer",
            hash(Scheme::Sha512Crypt, b"singer")
                .unwrap()
                .replace("{SHA512-CRYPT}", ""),
            1,
        ),
        // dovecot:ARGON2I
        ("dave@example.org", "ice", argon2i, 1),
        // md5crypt, PostfixAdmin's old default, bare and as dovecot:MD5-CRYPT
        (
            "frank@example.org",
            "md5-pass",
            "$1$Pf4mXc2Q$OmREHWVGrvkA2DFqdHLT00".to_string(),
            1,
        ),
        (
            "grace@example.org",
            "md5-pass",
            "{MD5-CRYPT}$1$Pf4mXc2Q$OmREHWVGrvkA2DFqdHLT00".to_string(),
            1,
        ),
        // a disabled mailbox: the right password, refused
        (
            "eve@example.org",
            "hidden",
            hash(Scheme::Sha512Crypt, b"hidden").unwrap(),
            0,
        ),
    ]
}

fn insert(placeholders: [&str; 5]) -> String {
    format!(
        "INSERT INTO mailbox (username, password, local_part, domain, active) VALUES ({})",
        placeholders.join(", ")
    )
}

fn config(dir: &TempDir, auth: &str, url: &str, query: &str) -> Config {
    let param = if url.starts_with("mysql://") {
        "?"
    } else {
        "$1"
    };
    let text = format!(
        "[pop3]\nlisten = [\"127.0.0.1:0\"]\n[store]\nroot = \"mail\"\n\
         [auth]\nfailure_delay_ms = 10\n{auth}\n[auth.sql]\nurl = \"{url}\"\n\
         password_query = \"{query}\"\n\
         user_query = \"SELECT maildir, quota FROM mailbox WHERE username = {param}\"\n"
    );
    Config::parse(&text, dir.path()).unwrap()
}

async fn node(config: Config) -> Node {
    let store = MaildirStore::new(
        config.store.root.clone(),
        config.store.path.clone(),
        config.store.default_domain.clone(),
    );
    let passdb = SqlPassDb::new(config.auth.sql.as_ref().unwrap())
        .unwrap()
        .with_case_insensitive_names(config.auth.case_insensitive_names);
    Node::start(config, store, passdb).await
}

const MYSQL_QUERY: &str =
    "SELECT username AS user, password FROM mailbox WHERE username = ? AND active = 1";
const PG_QUERY: &str =
    "SELECT username AS user, password FROM mailbox WHERE username = $1 AND active = 1";

async fn mariadb_url(test: &str) -> Option<String> {
    let db = crate::support::mariadb::server(test)?;
    let url = db.database(test);
    let mut sql = format!("{MAILBOX};");
    for (user, _, stored, active) in users() {
        let local = user.split('@').next().unwrap();
        sql.push_str(&insert([
            &format!("'{user}'"),
            &format!("'{stored}'"),
            &format!("'{local}'"),
            "'example.org'",
            &active.to_string(),
        ]));
        sql.push(';');
    }
    db.sql(&url, &sql);
    Some(url)
}

async fn postgres_url(test: &str) -> Option<String> {
    let cluster = cluster(test)?;
    let url = cluster.database(test).await;
    let client = connect(&url).await;
    client.batch_execute(MAILBOX).await.unwrap();
    for (user, _, stored, active) in users() {
        let local = user.split('@').next().unwrap();
        client
            .execute(
                &insert(["$1", "$2", "$3", "'example.org'", "$4"]),
                &[&user, &stored, &local, &(active as i16)],
            )
            .await
            .unwrap();
    }
    Some(url)
}

async fn logins_and_refusals(url: &str, query: &str) {
    let dir = tempfile::tempdir().unwrap();
    let node = node(config(&dir, "max_failures = 2", url, query)).await;
    for (user, password, _, active) in users() {
        let reply = node.try_login((user, password)).await.1;
        if active == 1 {
            assert!(reply.starts_with("+OK"), "{user}: {reply}");
        } else {
            assert!(reply.starts_with(AUTH_FAILED), "{user}: {reply}");
        }
    }
    // Letter case folds before the query.
    assert!(node
        .try_login(("Alice@Example.org", "wonderland"))
        .await
        .1
        .starts_with("+OK"));
    let (mut c, wrong) = node.try_login(("alice@example.org", "nope")).await;
    let unknown = node.try_login(("nobody@example.org", "nope")).await.1;
    let disabled = node.try_login(("eve@example.org", "hidden")).await.1;
    assert!(wrong.starts_with(AUTH_FAILED), "{wrong}");
    assert_eq!(wrong, unknown);
    assert_eq!(wrong, disabled);
    // A disabled mailbox's right password counts as a failure: the
    // second one closes the connection (max_failures = 2).
    c.ok("USER eve@example.org").await;
    let reply = c.cmd("PASS hidden").await;
    assert!(reply.contains("closing"), "{reply}");
    // The name is bound, never spliced: quotes are part of the name
    // (spliced, the comment would cut `AND active = 1` and the quote
    // close the string, and alice's password would open it).
    for name in ["x'OR'1'='1", "alice@example.org'#", "alice@example.org'--"] {
        let reply = node.try_login((name, "wonderland")).await.1;
        assert!(reply.starts_with(AUTH_FAILED), "{name}: {reply}");
    }
    // SCRAM, CRAM-MD5 and APOP are not offered: the query's hashes cannot
    // answer them.
    let mut c = Client::connect(node.addr).await;
    let greeting = c.line().await;
    assert!(!greeting.contains('<'), "{greeting}");
    let (_, capa) = c.multi("CAPA").await;
    let capa = String::from_utf8(capa).unwrap();
    assert!(capa.contains("SASL PLAIN LOGIN\r\n"), "{capa}");
}

#[tokio::test]
async fn sql_postfixadmin_on_mariadb() {
    let Some(url) = mariadb_url("sql_postfixadmin_on_mariadb").await else {
        return;
    };
    logins_and_refusals(&url, MYSQL_QUERY).await;
}

#[tokio::test]
async fn sql_postfixadmin_on_postgresql() {
    let Some(url) = postgres_url("sql_postfixadmin_on_postgresql").await else {
        return;
    };
    logins_and_refusals(&url, PG_QUERY).await;
}

#[tokio::test]
async fn sql_query_without_a_user_column_names_users_as_given() {
    let Some(url) = mariadb_url("sql_query_without_a_user_column").await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let config = config(
        &dir,
        "",
        &url,
        "SELECT password FROM mailbox WHERE username = ? AND active = 1",
    );
    let db = SqlPassDb::new(config.auth.sql.as_ref().unwrap()).unwrap();
    let ok = Credential::Password(Secret::new("builder".into()));
    assert_eq!(
        db.verify("bob@example.org", &ok).await.unwrap(),
        "bob@example.org"
    );
    assert_eq!(
        db.user_exists("BOB@example.org").await.unwrap().as_deref(),
        Some("bob@example.org")
    );
    assert_eq!(db.user_exists("eve@example.org").await.unwrap(), None);
}

#[tokio::test]
async fn sql_database_down_or_query_broken_is_a_temporary_error() {
    let Some(url) = mariadb_url("sql_database_down").await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    // Nothing listens there.
    let port = crate::support::free_port();
    let down = format!("mysql://mailbag:x@127.0.0.1:{port}/none");
    let node1 = node(config(&dir, "", &down, MYSQL_QUERY)).await;
    let reply = node1.try_login(("alice@example.org", "wonderland")).await.1;
    assert!(reply.starts_with(TEMP), "{reply}");
    // A query that names no such column.
    let node2 = node(config(
        &dir,
        "",
        &url,
        "SELECT username FROM mailbox WHERE username = ?",
    ))
    .await;
    let reply = node2.try_login(("alice@example.org", "wonderland")).await.1;
    assert!(reply.starts_with(TEMP), "{reply}");
    // A query that returns every row: which user is meant cannot be told.
    let node3 = node(config(
        &dir,
        "",
        &url,
        "SELECT password FROM mailbox WHERE ? IS NOT NULL",
    ))
    .await;
    let reply = node3.try_login(("alice@example.org", "wonderland")).await.1;
    assert!(reply.starts_with(TEMP), "{reply}");
}

#[test]
fn sql_refuses_a_url_it_cannot_speak() {
    let dir = tempfile::tempdir().unwrap();
    let text = "[pop3]\nlisten = [\"127.0.0.1:0\"]\n[store]\nroot = \"m\"\n[auth]\n\
                [auth.sql]\nurl = \"sqlite:///x\"\npassword_query = \"SELECT 1\"\n";
    let e = Config::parse(text, dir.path()).unwrap_err().to_string();
    assert!(e.contains("auth.sql.url"), "{e}");
    let both =
        "[pop3]\nlisten = [\"127.0.0.1:0\"]\n[store]\nroot = \"m\"\n[auth]\npasswd_file = \"p\"\n\
                [auth.sql]\nurl = \"mysql://a@b/c\"\npassword_query = \"SELECT 1\"\n";
    let e = Config::parse(both, dir.path()).unwrap_err().to_string();
    assert!(e.contains("auth.passwd_file"), "{e}");
    let _ = AuthError::Invalid;
}

/// Login cycles per second at 16 concurrent clients. Run by hand:
/// `cargo test --test it sql_login_rate -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread")]
#[ignore]
async fn sql_login_rate_16_clients() {
    let Some(my) = mariadb_url("sql_login_rate").await else {
        return;
    };
    let Some(pg) = postgres_url("sql_login_rate").await else {
        return;
    };
    crate::support::passwd_file_login_rate(Scheme::Sha512Crypt).await;
    // One user per client: a maildrop is one session's at a time.
    let stored = hash(Scheme::Sha512Crypt, b"load").unwrap();
    let db = crate::support::mariadb::server("sql_login_rate").unwrap();
    let pg_client = connect(&pg).await;
    for i in 0..16 {
        let user = format!("load{i}@example.org");
        db.sql(
            &my,
            &insert([
                &format!("'{user}'"),
                &format!("'{stored}'"),
                "'x'",
                "'example.org'",
                "1",
            ]),
        );
        pg_client
            .execute(
                &insert(["$1", "$2", "'x'", "'example.org'", "1"]),
                &[&user, &stored],
            )
            .await
            .unwrap();
    }
    for (what, url, query) in [("MariaDB", my, MYSQL_QUERY), ("PostgreSQL", pg, PG_QUERY)] {
        let dir = tempfile::tempdir().unwrap();
        // Logins in flight count as failures until they succeed.
        let node = node(config(
            &dir,
            "max_failures_per_address = 10000",
            &url,
            query,
        ))
        .await;
        crate::support::login_rate(
            &format!("SQL {what}"),
            node.addr,
            |i| format!("load{i}@example.org"),
            "load",
        )
        .await;
    }
}

#[tokio::test]
async fn sql_serve_logs_in_from_mariadb() {
    use std::process::{Command, Stdio};
    let Some(url) = mariadb_url("sql_serve_logs_in_from_mariadb").await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("mail")).unwrap();
    let port = crate::support::free_port();
    let config = dir.path().join("mailbag.toml");
    std::fs::write(
        &config,
        format!(
            "[pop3]\nlisten = [\"127.0.0.1:{port}\"]\n[store]\nroot = \"mail\"\n\
             [auth]\nfailure_delay_ms = 10\n[auth.sql]\nurl = \"{url}\"\n\
             password_query = \"{MYSQL_QUERY}\"\n"
        ),
    )
    .unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mailbag"));
    cmd.arg("serve").arg("--config").arg(&config);
    crate::support::as_unprivileged(&mut cmd, dir.path());
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut connected = None;
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            connected = Some(());
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let result = async {
        connected.expect("mailbag serve did not come up");
        let mut c = Client::connect(addr).await;
        c.line().await;
        c.ok("USER bob@example.org").await;
        let ok = c.cmd("PASS builder").await;
        let mut c = Client::connect(addr).await;
        c.line().await;
        c.ok("USER bob@example.org").await;
        let wrong = c.cmd("PASS nope").await;
        (ok, wrong)
    }
    .await;
    let _ = child.kill();
    let _ = child.wait();
    assert!(result.0.starts_with("+OK"), "{}", result.0);
    assert!(result.1.starts_with(AUTH_FAILED), "{}", result.1);
}

#[tokio::test]
async fn sql_postgresql_query_that_names_no_one_user_is_a_temporary_error() {
    let Some(url) = postgres_url("sql_postgresql_query_that_names_no_one_user").await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    // Every row, whatever the name: read no further than the second.
    let all = "SELECT username AS user, password FROM mailbox WHERE $1::text IS NOT NULL;";
    let node = node(config(&dir, "", &url, all)).await;
    let reply = node.try_login(("alice@example.org", "wonderland")).await.1;
    assert!(reply.starts_with(TEMP), "{reply}");
}
