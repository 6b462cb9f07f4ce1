//! Maildrops and quotas from the user's entry: LDAP's `maildrop_attribute`
//! and `quota_attribute` on a real slapd, and `[auth.sql] user_query` on
//! PostfixAdmin's `mailbox` table on a real MariaDB and PostgreSQL. Mail
//! delivered over LMTP and by `mailbag deliver` lands where the entry
//! says and is read there over POP3; two names on one maildrop share its
//! lock; a quota from the entry overrides `[quota]`; a hostile path is
//! refused and touches nothing outside the store.

use std::net::SocketAddr;
use std::path::Path;

use mailbag::auth::ldap::LdapPassDb;
use mailbag::auth::sql::SqlPassDb;
use mailbag::auth::PassDb;
use mailbag::config::Config;
use mailbag::store::deliver::{run, Exit};
use mailbag::store::maildir::MaildirStore;
use tempfile::TempDir;

use crate::support::ldap::{directory, mailbox_person, SERVICE_DN, SERVICE_PASSWORD};
use crate::support::pg::{cluster, connect, Node};
use crate::support::Client;

const BODY: &str = "Subject: where the directory says\r\n\r\nfrom the directory's maildrop\r\n";

/// One LMTP transaction; the RCPT reply and, when accepted, the reply
/// after the dot.
async fn lmtp(addr: SocketAddr, rcpt: &str, message: &str) -> (String, Option<String>) {
    let mut c = Client::connect(addr).await;
    assert!(c.line().await.starts_with("220"));
    c.send(b"LHLO mx.example.test\r\n").await;
    while c.line().await.starts_with("250-") {}
    assert!(c.cmd("MAIL FROM:<s@example.org>").await.starts_with("250"));
    let rcpt_reply = c.cmd(&format!("RCPT TO:<{rcpt}>")).await;
    if !rcpt_reply.starts_with("250") {
        return (rcpt_reply, None);
    }
    assert!(c.cmd("DATA").await.starts_with("354"));
    c.send(message.as_bytes()).await;
    let reply = c.cmd(".").await;
    (rcpt_reply, Some(reply))
}

fn files(dir: &Path) -> usize {
    std::fs::read_dir(dir).map_or(0, |d| d.count())
}

fn config(dir: &TempDir, auth: &str) -> Config {
    std::fs::create_dir_all(dir.path().join("mail")).unwrap();
    let text = format!(
        "[pop3]\nlisten = [\"127.0.0.1:0\"]\n[lmtp]\nlisten = [\"127.0.0.1:0\"]\n\
         [store]\nroot = \"mail\"\n[quota]\nmax_octets = 1000000\n\
         [auth]\nfailure_delay_ms = 10\n{auth}"
    );
    Config::parse(&text, dir.path()).unwrap()
}

fn store(config: &Config) -> MaildirStore {
    MaildirStore::new(
        config.store.root.clone(),
        config.store.path.clone(),
        config.store.default_domain.clone(),
    )
}

/// What every source must do, for users `shared1` and `shared2` (both on
/// `example.org/alice/`), `full` (quota 100 octets, over `[quota]`'s
/// million), `dotdot` (`../other`), `absolute` (`/etc`) and `linked`
/// (`example.org/linked/`, where a symlink to a directory outside the
/// store is planted), each with password `pw`.
async fn maildrops_and_quotas_from_the_entry<P: PassDb + Clone>(
    dir: &TempDir,
    config: Config,
    passdb: P,
    names: [&str; 6],
) {
    let [shared1, shared2, full, dotdot, absolute, linked] = names;
    let root = dir.path().join("mail");
    let outside = dir.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    std::fs::create_dir_all(root.join("example.org")).unwrap();
    std::os::unix::fs::symlink(&outside, root.join("example.org/linked")).unwrap();
    let node = Node::start(config.clone(), store(&config), passdb.clone()).await;
    let lmtp_addr = node.lmtp.unwrap();

    // LMTP delivers into the maildrop the entry names, not the template's.
    let (rcpt, data) = lmtp(lmtp_addr, shared1, BODY).await;
    assert!(rcpt.starts_with("250"), "{rcpt}");
    assert!(data.unwrap().starts_with("250"));
    let alice = root.join("example.org/alice");
    assert_eq!(files(&alice.join("new")), 1);
    assert!(
        !root.join("localhost").exists(),
        "delivered by the template"
    );

    // `mailbag deliver` does the same, for the other name.
    let out = run(
        &config,
        &store(&config),
        &passdb,
        shared2,
        None,
        BODY.as_bytes(),
    )
    .await;
    assert!(out.is_ok(), "{:?}", out.err());
    assert_eq!(files(&alice.join("new")), 2);

    // POP3 reads it there; the other name on the same maildrop is kept
    // out by its lock while the session lasts.
    let mut first = node.login((shared1, "pw")).await;
    let stat = first.ok("STAT").await;
    assert!(stat.starts_with("+OK 2 "), "{stat}");
    first.ok("RETR 1").await;
    let body = first.body().await;
    assert!(
        String::from_utf8_lossy(&body).contains("from the directory's maildrop"),
        "{body:?}"
    );
    let (_c, second) = node.try_login((shared2, "pw")).await;
    assert!(second.starts_with("-ERR [IN-USE]"), "{second}");
    first.ok("QUIT").await;
    let mut second = node.login((shared2, "pw")).await;
    assert!(second.ok("STAT").await.starts_with("+OK 2 "));
    second.ok("QUIT").await;

    // The quota from the entry, not [quota]'s million: 552 at LMTP,
    // EX_CANTCREAT from `mailbag deliver`.
    let big = format!("Subject: big\r\n\r\n{}\r\n", "x".repeat(200));
    let (rcpt, data) = lmtp(lmtp_addr, full, &big).await;
    assert!(rcpt.starts_with("250"), "{rcpt}");
    let data = data.unwrap();
    assert!(data.starts_with("552"), "{data}");
    let out = run(
        &config,
        &store(&config),
        &passdb,
        full,
        None,
        big.as_bytes(),
    )
    .await;
    assert_eq!(out.err().map(|r| r.exit), Some(Exit::CantCreate));
    // Another user under the same [quota] takes it.
    let (_, data) = lmtp(lmtp_addr, shared1, &big).await;
    assert!(data.unwrap().starts_with("250"));

    // Hostile paths: refused at login and at delivery, with nothing made
    // outside the store and no fallback to the template's maildrop.
    for user in [dotdot, absolute, linked] {
        let (_c, reply) = node.try_login((user, "pw")).await;
        assert!(reply.starts_with("-ERR [SYS/"), "{user}: {reply}");
        let (rcpt, data) = lmtp(lmtp_addr, user, BODY).await;
        assert!(
            !rcpt.starts_with("250") || !data.as_deref().unwrap_or("250").starts_with("250"),
            "{user}: {rcpt} {data:?}"
        );
        let out = run(
            &config,
            &store(&config),
            &passdb,
            user,
            None,
            BODY.as_bytes(),
        )
        .await;
        assert!(out.is_err(), "{user}");
    }
    assert_eq!(files(&outside), 0, "written through the planted link");
    assert!(!dir.path().join("other").exists());
    assert!(!Path::new("/etc/new").exists() && !Path::new("/etc/cur").exists());
    assert!(
        !root.join("localhost").exists(),
        "fell back to the template"
    );
    node.stop().await;
}

#[tokio::test]
async fn ldap_attributes_name_the_maildrop_and_quota() {
    let Some(slapd) = directory("ldap_attributes_name_the_maildrop_and_quota") else {
        return;
    };
    let pw = mailbag::auth::scheme::hash(mailbag::auth::scheme::Scheme::Ssha512, b"pw").unwrap();
    let entries = [
        ("uashared1", Some("example.org/alice/"), None),
        ("uashared2", Some("example.org/alice"), None),
        ("uafull", Some("example.org/full/"), Some("100")),
        ("uadotdot", Some("../other"), None),
        ("uaabsolute", Some("/etc"), None),
        ("ualinked", Some("example.org/linked/"), None),
    ];
    let ldif = entries
        .iter()
        .map(|(uid, maildrop, quota)| mailbox_person(uid, &pw, *maildrop, *quota))
        .collect::<Vec<_>>()
        .join("\n");
    slapd.ldapadd(&ldif).unwrap();
    for mode in ["lookup", "bind"] {
        let dir = tempfile::tempdir().unwrap();
        let config = config(
            &dir,
            &format!(
                "[auth.ldap]\nurl = \"{}\"\nmode = \"{mode}\"\n\
                 bind_dn = \"{SERVICE_DN}\"\nbind_password = \"{SERVICE_PASSWORD}\"\n\
                 base = \"{}\"\nuser_filter = \"(&(objectClass=inetOrgPerson)(uid=%u))\"\n\
                 name_attribute = \"uid\"\n\
                 maildrop_attribute = \"mailMessageStore\"\nquota_attribute = \"mailQuota\"\n",
                slapd.url(),
                crate::support::ldap::BASE,
            ),
        );
        let passdb = LdapPassDb::new(config.auth.ldap.as_ref().unwrap()).unwrap();
        maildrops_and_quotas_from_the_entry(
            &dir,
            config,
            passdb,
            [
                "uashared1",
                "uashared2",
                "uafull",
                "uadotdot",
                "uaabsolute",
                "ualinked",
            ],
        )
        .await;
    }
}

/// PostfixAdmin's `mailbox` table with the users of
/// [`maildrops_and_quotas_from_the_entry`].
const MAILBOX: &str = "CREATE TABLE mailbox (
    username VARCHAR(255) NOT NULL PRIMARY KEY,
    password VARCHAR(255) NOT NULL,
    maildir VARCHAR(255) NOT NULL DEFAULT '',
    quota BIGINT NOT NULL DEFAULT 0,
    active SMALLINT NOT NULL DEFAULT 1)";

const ROWS: [(&str, &str, i64); 6] = [
    ("shared1@example.org", "example.org/alice/", 0),
    ("shared2@example.org", "example.org/alice/", 0),
    ("full@example.org", "example.org/full/", 100),
    ("dotdot@example.org", "../other", 0),
    ("absolute@example.org", "/etc", 0),
    ("linked@example.org", "example.org/linked/", 0),
];

const SQL_NAMES: [&str; 6] = [
    "shared1@example.org",
    "shared2@example.org",
    "full@example.org",
    "dotdot@example.org",
    "absolute@example.org",
    "linked@example.org",
];

fn sql_config(dir: &TempDir, url: &str, param: &str) -> Config {
    config(
        dir,
        &format!(
            "[auth.sql]\nurl = \"{url}\"\n\
             password_query = \"SELECT username AS user, password FROM mailbox \
             WHERE username = {param} AND active = 1\"\n\
             user_query = \"SELECT maildir, quota FROM mailbox WHERE username = {param}\"\n"
        ),
    )
}

#[tokio::test]
async fn sql_user_query_names_the_maildrop_and_quota_on_mariadb() {
    let Some(db) = crate::support::mariadb::server("sql_user_query_on_mariadb") else {
        return;
    };
    let url = db.database("sql_user_query_on_mariadb");
    let pw =
        mailbag::auth::scheme::hash(mailbag::auth::scheme::Scheme::Sha512Crypt, b"pw").unwrap();
    let mut sql = format!("{MAILBOX};");
    for (user, maildir, quota) in ROWS {
        sql.push_str(&format!(
            "INSERT INTO mailbox (username, password, maildir, quota) \
             VALUES ('{user}', '{pw}', '{maildir}', {quota});"
        ));
    }
    db.sql(&url, &sql);
    let dir = tempfile::tempdir().unwrap();
    let config = sql_config(&dir, &url, "?");
    let passdb = SqlPassDb::new(config.auth.sql.as_ref().unwrap()).unwrap();
    maildrops_and_quotas_from_the_entry(&dir, config, passdb, SQL_NAMES).await;
}

#[tokio::test]
async fn sql_user_query_names_the_maildrop_and_quota_on_postgresql() {
    let Some(cluster) = cluster("sql_user_query_on_postgresql") else {
        return;
    };
    let url = cluster.database("sql_user_query_on_postgresql").await;
    let client = connect(&url).await;
    client.batch_execute(MAILBOX).await.unwrap();
    let pw =
        mailbag::auth::scheme::hash(mailbag::auth::scheme::Scheme::Sha512Crypt, b"pw").unwrap();
    for (user, maildir, quota) in ROWS {
        client
            .execute(
                "INSERT INTO mailbox (username, password, maildir, quota) VALUES ($1, $2, $3, $4)",
                &[&user, &pw, &maildir, &quota],
            )
            .await
            .unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let config = sql_config(&dir, &url, "$1");
    let passdb = SqlPassDb::new(config.auth.sql.as_ref().unwrap()).unwrap();
    maildrops_and_quotas_from_the_entry(&dir, config, passdb, SQL_NAMES).await;

    // Columns of other integer types, a message count, NULL for "as
    // configured", and two rows for one name.
    let other = tempfile::tempdir().unwrap();
    let mut config = sql_config(&other, &url, "$1");
    let sql = config.auth.sql.as_mut().unwrap();
    sql.user_query = Some(
        "SELECT NULL::text AS maildir, quota::int AS quota, 1::smallint AS quota_messages \
         FROM mailbox WHERE username = $1"
            .into(),
    );
    let passdb = SqlPassDb::new(sql).unwrap();
    let user = passdb.find_user("full@example.org").await.unwrap().unwrap();
    assert_eq!(
        user.attributes,
        mailbag::auth::UserAttributes {
            maildrop: None,
            quota_octets: Some(100),
            quota_messages: Some(1),
        }
    );
    let configured = mailbag::config::Quota {
        max_octets: 5,
        max_messages: 7,
    };
    assert_eq!(
        user.quota(configured),
        mailbag::config::Quota {
            max_octets: 100,
            max_messages: 1,
        }
    );
    sql.user_query = Some("SELECT maildir FROM mailbox WHERE $1::text IS NOT NULL".into());
    let passdb = SqlPassDb::new(sql).unwrap();
    assert!(passdb.find_user("full@example.org").await.is_err());
    sql.user_query = Some("SELECT maildir, -1 AS quota FROM mailbox WHERE username = $1".into());
    let passdb = SqlPassDb::new(sql).unwrap();
    assert!(passdb.find_user("full@example.org").await.is_err());
}

/// Without an attribute or a user query, the maildrop is the template's,
/// as before.
#[tokio::test]
async fn users_without_attributes_keep_the_template_maildrop() {
    let Some(slapd) = directory("users_without_attributes_keep_the_template") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let config = config(
        &dir,
        &format!(
            "[auth.ldap]\nurl = \"{}\"\nmode = \"lookup\"\n\
             bind_dn = \"{SERVICE_DN}\"\nbind_password = \"{SERVICE_PASSWORD}\"\n\
             base = \"{}\"\nuser_filter = \"(&(objectClass=inetOrgPerson)(uid=%u))\"\n\
             maildrop_attribute = \"mailMessageStore\"\n",
            slapd.url(),
            crate::support::ldap::BASE,
        ),
    );
    let passdb = LdapPassDb::new(config.auth.ldap.as_ref().unwrap()).unwrap();
    let node = Node::start(config.clone(), store(&config), passdb).await;
    let (rcpt, data) = lmtp(node.lmtp.unwrap(), "alice", BODY).await;
    assert!(rcpt.starts_with("250") && data.unwrap().starts_with("250"));
    let template = dir.path().join("mail/localhost/alice/Maildir/new");
    assert_eq!(files(&template), 1);
    let mut c = node.login(crate::support::ldap::ALICE).await;
    assert!(c.ok("STAT").await.starts_with("+OK 1 "));
    node.stop().await;
}
