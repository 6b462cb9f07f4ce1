//! The LDAP passdb against a real OpenLDAP (`slapd`) on loopback: both
//! modes, name escaping, what CAPA offers, LDAPS and StartTLS, and a
//! directory restart in the middle of logins.

use mailbag::auth::ldap::LdapPassDb;
use mailbag::auth::{AuthError, Credential, PassDb};
use mailbag::config::Config;
use mailbag::store::maildir::MaildirStore;
use mailbag_proto::secret::Secret;
use tempfile::TempDir;

use crate::support::ldap::{
    directory, own_directory, Slapd, ALICE, BASE, BOB, CAROL, LEGACY, MODERN,
};
use crate::support::ldap::{SERVICE_DN, SERVICE_PASSWORD};
use crate::support::pg::Node;
use crate::support::Client;

const AUTH_FAILED: &str = "-ERR [AUTH] Authentication failed";
const TEMP: &str = "-ERR [SYS/TEMP]";

fn service() -> String {
    format!("bind_dn = \"{SERVICE_DN}\"\nbind_password = \"{SERVICE_PASSWORD}\"\n")
}

/// Bind mode, the DN found by a search with the service account.
fn bind_search(slapd: &Slapd) -> String {
    format!(
        "url = \"{}\"\nmode = \"bind\"\n{}base = \"{BASE}\"\n\
         user_filter = \"(&(objectClass=inetOrgPerson)(uid=%u))\"\nname_attribute = \"uid\"\n",
        slapd.url(),
        service()
    )
}

/// Lookup mode: userPassword read by the service account.
fn lookup(slapd: &Slapd) -> String {
    format!(
        "url = \"{}\"\nmode = \"lookup\"\n{}base = \"{BASE}\"\n\
         user_filter = \"(&(objectClass=inetOrgPerson)(uid=%u))\"\n",
        slapd.url(),
        service()
    )
}

fn config(dir: &TempDir, auth: &str, ldap: &str) -> Config {
    let text = format!(
        "[pop3]\nlisten = [\"127.0.0.1:0\"]\n[store]\nroot = \"mail\"\n\
         [auth]\nfailure_delay_ms = 10\n{auth}\n[auth.ldap]\n{ldap}"
    );
    Config::parse(&text, dir.path()).unwrap()
}

fn passdb(config: &Config) -> LdapPassDb {
    LdapPassDb::new(config.auth.ldap.as_ref().unwrap())
        .unwrap()
        .with_case_insensitive_names(config.auth.case_insensitive_names)
}

async fn node(auth: &str, ldap: &str) -> (TempDir, Node) {
    let dir = tempfile::tempdir().unwrap();
    let config = config(&dir, auth, ldap);
    let store = MaildirStore::new(
        config.store.root.clone(),
        config.store.path.clone(),
        config.store.default_domain.clone(),
    );
    let passdb = passdb(&config);
    let node = Node::start(config, store, passdb).await;
    (dir, node)
}

async fn pass(node: &Node, user: &str, password: &str) -> String {
    node.try_login((user, password)).await.1
}

fn password(p: &str) -> Credential {
    Credential::Password(Secret::new(p.to_string()))
}

#[tokio::test]
async fn ldap_bind_mode_found_by_search_logs_in_and_refuses_unknown_like_wrong() {
    let Some(slapd) = directory("ldap_bind_mode_found_by_search") else {
        return;
    };
    let (_dir, node) = node("", &bind_search(slapd)).await;
    assert!(pass(&node, ALICE.0, ALICE.1).await.starts_with("+OK"));
    assert!(pass(&node, BOB.0, BOB.1).await.starts_with("+OK"));
    // Letter case is the directory's matching rule; the name is the uid.
    assert!(pass(&node, "ALICE", ALICE.1).await.starts_with("+OK"));
    let wrong = pass(&node, ALICE.0, "not the password").await;
    let unknown = pass(&node, "nobody", ALICE.1).await;
    assert!(wrong.starts_with(AUTH_FAILED), "{wrong}");
    assert_eq!(wrong, unknown);
    // One user's password does not open another's entry.
    assert!(pass(&node, CAROL.0, ALICE.1).await.starts_with(AUTH_FAILED));
}

#[tokio::test]
async fn ldap_bind_mode_offers_only_what_a_bind_can_check() {
    let Some(slapd) = directory("ldap_bind_mode_offers") else {
        return;
    };
    let (_dir, node) = node("", &bind_search(slapd)).await;
    let mut c = Client::connect(node.addr).await;
    let greeting = c.line().await;
    // No APOP timestamp: the directory never gives mailbag a secret.
    assert!(!greeting.contains('<'), "{greeting}");
    let (_, capa) = c.multi("CAPA").await;
    let capa = String::from_utf8(capa).unwrap();
    let sasl = capa.lines().find(|l| l.starts_with("SASL")).unwrap();
    assert_eq!(sasl, "SASL PLAIN LOGIN", "{capa}");
    // AUTH PLAIN works through the bind.
    use base64::Engine as _;
    let plain = base64::engine::general_purpose::STANDARD.encode(format!("\0{}\0{}", BOB.0, BOB.1));
    assert!(c
        .cmd(&format!("AUTH PLAIN {plain}"))
        .await
        .starts_with("+OK"));
}

#[tokio::test]
async fn ldap_bind_mode_with_a_dn_template() {
    let Some(slapd) = directory("ldap_bind_mode_with_a_dn_template") else {
        return;
    };
    let ldap = format!(
        "url = \"{}\"\nmode = \"bind\"\nuser_dn = \"uid=%n,{BASE}\"\n",
        slapd.url()
    );
    let (_dir, node) = node("", &ldap).await;
    let first = pass(&node, BOB.0, BOB.1).await;
    assert!(first.starts_with("+OK"), "{first}");
    let wrong = pass(&node, BOB.0, ALICE.1).await;
    assert!(wrong.starts_with(AUTH_FAILED), "{wrong}");
    assert_eq!(wrong, pass(&node, "nobody", ALICE.1).await);
    // A name that would add an RDN component to the DN if spliced raw
    // names no entry: escaped, it is one odd uid value.
    assert!(pass(&node, "bob+uid=x", BOB.1)
        .await
        .starts_with(AUTH_FAILED));
}

#[tokio::test]
async fn ldap_an_empty_password_is_never_an_unauthenticated_bind() {
    let Some(slapd) = directory("ldap_an_empty_password") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    for ldap in [
        bind_search(slapd),
        format!(
            "url = \"{}\"\nmode = \"bind\"\nuser_dn = \"uid=%n,{BASE}\"\n",
            slapd.url()
        ),
    ] {
        let db = passdb(&config(&dir, "", &ldap));
        // RFC 4513 §5.1.2: a simple bind with a DN and no password
        // "succeeds" without checking anything.
        assert!(matches!(
            db.verify(ALICE.0, &password("")).await,
            Err(AuthError::Invalid)
        ));
        assert_eq!(
            db.verify(ALICE.0, &password(ALICE.1)).await.unwrap(),
            ALICE.0
        );
    }
}

#[tokio::test]
async fn ldap_filter_values_are_escaped() {
    let Some(slapd) = directory("ldap_filter_values_are_escaped") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    for ldap in [bind_search(slapd), lookup(slapd)] {
        let db = passdb(&config(&dir, "", &ldap));
        // Spliced raw, `al*` would match alice's entry and `*)(uid=*`
        // every entry.
        for name in ["al*", "*", "alice)(uid=*", "a*e"] {
            assert_eq!(db.user_exists(name).await.unwrap(), None, "{name}");
            assert!(
                matches!(
                    db.verify(name, &password(ALICE.1)).await,
                    Err(AuthError::Invalid)
                ),
                "{name}"
            );
        }
    }
    let (_dir, node) = node("", &lookup(slapd)).await;
    assert!(pass(&node, "al*", ALICE.1).await.starts_with(AUTH_FAILED));
}

#[tokio::test]
async fn ldap_lookup_mode_checks_the_stored_crypt_values_here() {
    let Some(slapd) = directory("ldap_lookup_mode") else {
        return;
    };
    let (_dir, node) = node("", &lookup(slapd)).await;
    // {CRYPT}$6$ and {CRYPT}$2b$ as OpenLDAP keeps them.
    assert!(pass(&node, ALICE.0, ALICE.1).await.starts_with("+OK"));
    assert!(pass(&node, BOB.0, BOB.1).await.starts_with("+OK"));
    let wrong = pass(&node, BOB.0, "nope").await;
    assert!(wrong.starts_with(AUTH_FAILED), "{wrong}");
    assert_eq!(wrong, pass(&node, "nobody", "nope").await);
    // Not offered without offer_scram.
    let mut c = Client::connect(node.addr).await;
    c.line().await;
    let (_, capa) = c.multi("CAPA").await;
    assert!(!String::from_utf8(capa).unwrap().contains("SCRAM"));
}

#[tokio::test]
async fn ldap_legacy_hashes_as_openldap_stores_them() {
    let Some(slapd) = directory("ldap_legacy_hashes") else {
        return;
    };
    // Lookup mode checks them here ({SSHA}, DES and MD5 {CRYPT}, the
    // argon2 module's {ARGON2}, pw-sha2's {SSHA512}); bind mode leaves
    // them to slapd.
    for ldap in [lookup(slapd), bind_search(slapd)] {
        let (_dir, node) = node("", &ldap).await;
        let all = LEGACY.iter().map(|&(u, p, s)| (u, p, s));
        let modern = MODERN.iter().map(|&(u, p)| (u, p, "{ARGON2} or {SSHA512}"));
        for (uid, password, stored) in all.chain(modern) {
            let reply = pass(&node, uid, password).await;
            assert!(reply.starts_with("+OK"), "{uid} {stored}: {reply}");
            let reply = pass(&node, uid, "wrong").await;
            assert!(reply.starts_with(AUTH_FAILED), "{uid} {stored}: {reply}");
        }
    }
}

#[tokio::test]
async fn ldap_lookup_by_mail_names_the_maildrop_by_uid() {
    let Some(slapd) = directory("ldap_lookup_by_mail") else {
        return;
    };
    let ldap = format!(
        "url = \"{}\"\nmode = \"lookup\"\n{}base = \"{BASE}\"\n\
         user_filter = \"(&(objectClass=inetOrgPerson)(mail=%u))\"\nname_attribute = \"uid\"\n\
         maildrop_attribute = \"mailMessageStore\"\nquota_attribute = \"mailQuota\"\n",
        slapd.url(),
        service()
    );
    let dir = tempfile::tempdir().unwrap();
    let db = passdb(&config(&dir, "", &ldap));
    assert_eq!(
        db.user_exists("alice@example.org")
            .await
            .unwrap()
            .as_deref(),
        Some("alice")
    );
    assert_eq!(
        db.verify("alice@example.org", &password(ALICE.1))
            .await
            .unwrap(),
        "alice"
    );
    assert_eq!(db.user_exists("alice").await.unwrap(), None);
}

#[tokio::test]
async fn ldap_service_account_that_cannot_bind_is_a_temporary_error() {
    let Some(slapd) = directory("ldap_service_account") else {
        return;
    };
    let ldap = lookup(slapd).replace(SERVICE_PASSWORD, "wrong");
    let (_dir, node) = node("", &ldap).await;
    let reply = pass(&node, ALICE.0, ALICE.1).await;
    assert!(reply.starts_with(TEMP), "{reply}");
}

#[tokio::test]
async fn ldaps_and_starttls_check_the_directory_against_the_ca_file() {
    let Some(slapd) = directory("ldaps_and_starttls") else {
        return;
    };
    let ca = slapd.ca();
    let ldaps = lookup(slapd).replace(&slapd.url(), &slapd.tls_url())
        + &format!("ca_file = \"{}\"\n", ca.display());
    let (_dir, n1) = node("", &ldaps).await;
    assert!(pass(&n1, ALICE.0, ALICE.1).await.starts_with("+OK"));
    let starttls =
        bind_search(slapd) + &format!("starttls = true\nca_file = \"{}\"\n", ca.display());
    let (_dir2, n2) = node("", &starttls).await;
    assert!(pass(&n2, BOB.0, BOB.1).await.starts_with("+OK"));
    // A directory whose certificate the CA file does not vouch for is
    // not talked to: a temporary error, never a login.
    let other = tempfile::tempdir().unwrap();
    let other_ca = other.path().join("ca.pem");
    mailbag::server::tls::write_self_signed(&["127.0.0.1"], &other_ca, &other.path().join("k.pem"))
        .unwrap();
    let untrusted = lookup(slapd).replace(&slapd.url(), &slapd.tls_url())
        + &format!("ca_file = \"{}\"\n", other_ca.display());
    let (_dir3, n3) = node("", &untrusted).await;
    let reply = pass(&n3, ALICE.0, ALICE.1).await;
    assert!(reply.starts_with(TEMP), "{reply}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ldap_directory_restart_costs_logins_a_temporary_error_only() {
    let Some(slapd) = own_directory("ldap_directory_restart") else {
        return;
    };
    for ldap in [bind_search(&slapd), lookup(&slapd)] {
        // Few failures allowed per connection: a temporary error must
        // not count as one.
        let (dir, node) = node("max_failures = 2", &ldap).await;
        // Logins before: connections pooled.
        let users = [ALICE, BOB, CAROL];
        let mut waiting = Vec::new();
        for user in users {
            let (mut c, reply) = node.try_login(user).await;
            assert!(reply.starts_with("+OK"), "{reply}");
            c.ok("QUIT").await;
            let mut c = Client::connect(node.addr).await;
            c.line().await;
            waiting.push((c, user));
        }
        // A session that logged in before the restart: the directory is
        // not asked again for it, so it keeps working throughout.
        let held_user = MODERN[1];
        let maildir = dir
            .path()
            .join("mail")
            .join("localhost")
            .join(held_user.0)
            .join("Maildir");
        let new = maildir.join("new");
        std::fs::create_dir_all(&new).unwrap();
        std::fs::write(new.join("1.m1.host"), "Subject: kept\n\nbody\n").unwrap();
        let (mut held, reply) = node.try_login(held_user).await;
        assert!(reply.starts_with("+OK"), "{reply}");
        slapd.stop_daemon();
        held.ok("STAT").await;
        let (_, body) = held.multi("RETR 1").await;
        assert!(body.ends_with(b"\r\nbody\r\n"), "{body:?}");
        held.ok("DELE 1").await;
        // During the restart: every login is a temporary error, never
        // a wrong password, and none is counted.
        for (c, user) in &mut waiting {
            for _ in 0..4 {
                c.ok(&format!("USER {}", user.0)).await;
                let reply = c.cmd(&format!("PASS {}", user.1)).await;
                assert!(reply.starts_with(TEMP), "{reply}");
            }
        }
        slapd.start_daemon().unwrap();
        // After it: the same connections log in, without restarting
        // mailbag.
        for (c, user) in &mut waiting {
            c.ok(&format!("USER {}", user.0)).await;
            let reply = c.cmd(&format!("PASS {}", user.1)).await;
            assert!(reply.starts_with("+OK"), "{reply}");
            c.ok("QUIT").await;
        }
        assert!(pass(&node, BOB.0, BOB.1).await.starts_with("+OK"));
        // The session from before the restart ends as any other: its
        // deletion is committed at QUIT.
        held.ok("QUIT").await;
        let left = std::fs::read_dir(maildir.join("cur")).map_or(0, Iterator::count);
        assert_eq!(left, 0);
    }
}

/// Login cycles per second at 16 concurrent clients (connect, USER,
/// PASS, QUIT). Run by hand: `cargo test --test it ldap_login_rate --
/// --ignored --nocapture` (a debug build unless `--release`).
#[tokio::test(flavor = "multi_thread")]
#[ignore]
async fn ldap_login_rate_16_clients() {
    let Some(slapd) = directory("ldap_login_rate") else {
        return;
    };
    crate::support::passwd_file_login_rate(mailbag::auth::scheme::Scheme::Sha512Crypt).await;
    // One user per client: a maildrop is one session's at a time.
    let stored = crate::support::ldap::crypt(mailbag::auth::scheme::Scheme::Sha512Crypt, "load");
    let tree: String = (0..16)
        .map(|i| crate::support::ldap::person(&format!("load{i}"), &stored) + "\n")
        .collect();
    slapd.ldapadd(&tree).unwrap();
    for (what, ldap) in [("bind", bind_search(slapd)), ("lookup", lookup(slapd))] {
        // Logins in flight count as failures until they succeed.
        let (_dir, node) = node("max_failures_per_address = 10000", &ldap).await;
        crate::support::login_rate(
            &format!("LDAP {what}"),
            node.addr,
            |i| format!("load{i}"),
            "load",
        )
        .await;
    }
}

#[test]
fn ldap_check_config_and_deliver_use_the_directory() {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let Some(slapd) = directory("ldap_check_config_and_deliver") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("mail")).unwrap();
    let config = dir.path().join("mailbag.toml");
    std::fs::write(
        &config,
        format!(
            "[pop3]\nlisten = [\"127.0.0.1:0\"]\n[store]\nroot = \"mail\"\n\
             [auth]\nfailure_delay_ms = 10\n[auth.ldap]\n{}",
            lookup(slapd)
        ),
    )
    .unwrap();
    let mailbag = |args: &[&str], stdin: &[u8]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_mailbag"));
        cmd.args(args).arg("--config").arg(&config);
        crate::support::as_unprivileged(&mut cmd, dir.path());
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let _ = child.stdin.take().unwrap().write_all(stdin);
        child.wait_with_output().unwrap()
    };
    let out = mailbag(&["check-config"], b"");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let message = b"Subject: hi\n\nfrom the directory\n";
    let out = mailbag(&["deliver", "--user", "alice"], message);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let new = dir.path().join("mail/localhost/alice/Maildir/new");
    assert_eq!(std::fs::read_dir(&new).unwrap().count(), 1);
    // Not in the directory: EX_NOUSER, nothing stored.
    let out = mailbag(&["deliver", "--user", "nobody"], message);
    assert_eq!(
        out.status.code(),
        Some(67),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!dir.path().join("mail/localhost/nobody").exists());
}
