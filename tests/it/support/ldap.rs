//! The OpenLDAP test harness: one throwaway `slapd` (Debian's package) on
//! loopback in a temporary directory with its own slapd.conf and a small
//! tree, shared by every test of a run, with plain LDAP (and StartTLS)
//! on one port and LDAPS on another, both with a self-signed certificate
//! that is also the CA to trust.
//!
//! Without `slapd` the tests print `SKIPPED: ...` and pass, except under
//! CI (the `CI` variable), where they fail. A watcher process stops the
//! daemon and removes its directory when the test process exits.
//!
//! Tests that restart the directory get one of their own
//! ([`Slapd::start`]), so that the shared one never goes away under
//! other tests.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use crate::support::free_port;
use crate::support::pg::skip;

pub const BASE: &str = "ou=people,dc=example,dc=org";
pub const SERVICE_DN: &str = "cn=mailbag,dc=example,dc=org";
pub const SERVICE_PASSWORD: &str = "service-secret";
const ROOT_DN: &str = "cn=admin,dc=example,dc=org";
const ROOT_PASSWORD: &str = "admin-secret";

/// The users in the tree: (uid, mail, password, how userPassword stores it).
pub const ALICE: (&str, &str) = ("alice", "wonderland");
pub const BOB: (&str, &str) = ("bob", "builder");
/// In the tree, with a password, but `uid=carol*`-like names must not
/// reach her through a filter.
pub const CAROL: (&str, &str) = ("carol", "singer");

/// Users whose `userPassword` is in the older schemes OpenLDAP installs
/// hold (made with `slappasswd`, `openssl passwd -1` and crypt(3)):
/// (uid, password, stored).
pub const LEGACY: [(&str, &str, &str); 3] = [
    ("dan", "ssha-pass", "{SSHA}/quekqt1Y3r+ICQAgzzKUyZFeO50aX42"),
    ("erin", "despass", "{CRYPT}xylAuSS8y/CJA"),
    (
        "frank",
        "md5-pass",
        "{CRYPT}$1$CQNm71.g$hhBTAF8ZES7N7PCU3gT0l.",
    ),
];

/// Users in the schemes OpenLDAP's argon2 and pw-sha2 modules write.
pub const MODERN: [(&str, &str); 2] = [("gina", "argon-pass"), ("hank", "sha2-pass")];

pub struct Slapd {
    root: PathBuf,
    pub port: u16,
    pub tls_port: u16,
}

fn slapd_bin() -> Option<PathBuf> {
    let bin = PathBuf::from("/usr/sbin/slapd");
    (bin.exists() && PathBuf::from("/usr/bin/ldapadd").exists()).then_some(bin)
}

/// `{CRYPT}` values as OpenLDAP keeps them (checked by crypt(3) in bind
/// mode, by mailbag in lookup mode).
pub fn crypt(scheme: mailbag::auth::scheme::Scheme, password: &str) -> String {
    let stored = mailbag::auth::scheme::hash(scheme, password.as_bytes()).unwrap();
    let data = stored.split_once('}').map_or(stored.as_str(), |(_, d)| d);
    format!("{{CRYPT}}{data}")
}

impl Slapd {
    /// A new directory with the test tree, running.
    pub fn start() -> Result<Slapd, String> {
        slapd_bin()
            .ok_or("slapd not found (install the Debian `slapd` and `ldap-utils` packages)")?;
        let root = tempfile::Builder::new()
            .prefix("mailbag-ldap-")
            .tempdir()
            .map_err(|e| e.to_string())?
            .keep();
        std::fs::create_dir(root.join("db")).map_err(|e| e.to_string())?;
        let slapd = Slapd {
            root,
            port: free_port(),
            tls_port: free_port(),
        };
        slapd.watch();
        mailbag::server::tls::write_self_signed(
            &["localhost", "127.0.0.1"],
            &slapd.ca(),
            &slapd.root.join("key.pem"),
        )
        .map_err(|e| format!("certificate: {e}"))?;
        let r = slapd.root.display();
        std::fs::write(slapd.root.join("mailbox.schema"), MAILBOX_SCHEMA)
            .map_err(|e| e.to_string())?;
        let conf = format!(
            "include /etc/ldap/schema/core.schema\n\
             include /etc/ldap/schema/cosine.schema\n\
             include /etc/ldap/schema/inetorgperson.schema\n\
             include {r}/mailbox.schema\n\
             modulepath /usr/lib/ldap\n\
             moduleload back_mdb\n\
             moduleload argon2\n\
             moduleload pw-sha2\n\
             pidfile {r}/slapd.pid\n\
             TLSCertificateFile {r}/ca.pem\n\
             TLSCertificateKeyFile {r}/key.pem\n\
             database mdb\n\
             maxsize 10485760\n\
             suffix \"dc=example,dc=org\"\n\
             rootdn \"{ROOT_DN}\"\n\
             rootpw {ROOT_PASSWORD}\n\
             directory {r}/db\n\
             access to attrs=userPassword\n  by dn.exact=\"{SERVICE_DN}\" read\n  by anonymous auth\n  by * none\n\
             access to * by * read\n"
        );
        std::fs::write(slapd.root.join("slapd.conf"), conf).map_err(|e| e.to_string())?;
        slapd.start_daemon()?;
        use mailbag::auth::scheme::Scheme;
        let tree = format!(
            "dn: dc=example,dc=org\nobjectClass: dcObject\nobjectClass: organization\no: Example\ndc: example\n\n\
             dn: {SERVICE_DN}\nobjectClass: simpleSecurityObject\nobjectClass: organizationalRole\ncn: mailbag\nuserPassword: {SERVICE_PASSWORD}\n\n\
             dn: {BASE}\nobjectClass: organizationalUnit\nou: people\n\n\
             {alice}\n{bob}\n{carol}\n{modern}\n{legacy}",
            alice = person(ALICE.0, &crypt(Scheme::Sha512Crypt, ALICE.1)),
            bob = person(BOB.0, &crypt(Scheme::BlfCrypt, BOB.1)),
            carol = person(CAROL.0, &crypt(Scheme::Sha512Crypt, CAROL.1)),
            modern = [
                person("gina", &crypt(Scheme::Argon2id, "argon-pass").replace("{CRYPT}", "{ARGON2}")),
                person("hank", &mailbag::auth::scheme::hash(Scheme::Ssha512, b"sha2-pass").unwrap()),
            ]
            .join("\n"),
            legacy = LEGACY
                .iter()
                .map(|(uid, _, stored)| person(uid, stored))
                .collect::<Vec<_>>()
                .join("\n"),
        );
        slapd.ldapadd(&tree)?;
        Ok(slapd)
    }

    /// Adds entries (LDIF) as the directory's root.
    pub fn ldapadd(&self, ldif: &str) -> Result<(), String> {
        use std::io::Write;
        let mut child = Command::new("ldapadd")
            .args(["-x", "-H", &self.url(), "-D", ROOT_DN, "-w", ROOT_PASSWORD])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("ldapadd: {e}"))?;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(ldif.as_bytes())
            .map_err(|e| e.to_string())?;
        let out = child.wait_with_output().map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(format!(
                "ldapadd failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(())
    }

    pub fn url(&self) -> String {
        format!("ldap://127.0.0.1:{}", self.port)
    }

    pub fn tls_url(&self) -> String {
        format!("ldaps://127.0.0.1:{}", self.tls_port)
    }

    /// The server certificate, also the CA to trust.
    pub fn ca(&self) -> PathBuf {
        self.root.join("ca.pem")
    }

    /// Starts slapd (as root on high ports: it needs no other account)
    /// and waits until it answers.
    pub fn start_daemon(&self) -> Result<(), String> {
        let urls = format!("{} {}", self.url(), self.tls_url());
        let out = Command::new(slapd_bin().unwrap())
            .arg("-f")
            .arg(self.root.join("slapd.conf"))
            .args(["-h", &urls])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("slapd: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "slapd failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        for _ in 0..200 {
            let ok = Command::new("ldapwhoami")
                .args(["-x", "-H", &self.url()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err("slapd did not answer within 10 s".into())
    }

    fn pid(&self) -> Option<i32> {
        std::fs::read_to_string(self.root.join("slapd.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// Stops slapd and waits until it has gone (its ports are closed).
    pub fn stop_daemon(&self) {
        let Some(pid) = self.pid() else { return };
        let _ = Command::new("kill").arg(pid.to_string()).status();
        for _ in 0..200 {
            let alive = Command::new("kill")
                .args(["-0", &pid.to_string()])
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if !alive {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops slapd and removes its directory once this process has gone.
    fn watch(&self) {
        let script = format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 1; done; \
             [ -f '{root}/slapd.pid' ] && kill $(cat '{root}/slapd.pid') 2>/dev/null; \
             sleep 1; rm -rf '{root}'",
            pid = std::process::id(),
            root = self.root.display(),
        );
        let _ = Command::new("setsid")
            .args(["sh", "-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
    }
}

impl Drop for Slapd {
    fn drop(&mut self) {
        self.stop_daemon();
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// The maildrop and quota attributes as mail directories carry them
/// (the names of the qmail/Courier schemas), under a test OID arc.
const MAILBOX_SCHEMA: &str = "\
attributetype ( 1.3.6.1.4.1.32473.1.1 NAME 'mailMessageStore' \
 EQUALITY caseExactIA5Match SYNTAX 1.3.6.1.4.1.1466.115.121.1.26 SINGLE-VALUE )
attributetype ( 1.3.6.1.4.1.32473.1.2 NAME 'mailQuota' \
 EQUALITY caseExactIA5Match SYNTAX 1.3.6.1.4.1.1466.115.121.1.26 SINGLE-VALUE )
objectclass ( 1.3.6.1.4.1.32473.2.1 NAME 'mailbagMailbox' SUP top AUXILIARY \
 MAY ( mailMessageStore $ mailQuota ) )
";

/// An entry with a maildrop and a quota, as `person` makes one.
pub fn mailbox_person(
    uid: &str,
    password: &str,
    maildrop: Option<&str>,
    quota: Option<&str>,
) -> String {
    let mut entry = person(uid, password).replacen(
        "objectClass: inetOrgPerson\n",
        "objectClass: inetOrgPerson\nobjectClass: mailbagMailbox\n",
        1,
    );
    if let Some(maildrop) = maildrop {
        entry.push_str(&format!("mailMessageStore: {maildrop}\n"));
    }
    if let Some(quota) = quota {
        entry.push_str(&format!("mailQuota: {quota}\n"));
    }
    entry
}

pub fn person(uid: &str, password: &str) -> String {
    format!(
        "dn: uid={uid},{BASE}\nobjectClass: inetOrgPerson\nuid: {uid}\ncn: {uid}\nsn: {uid}\n\
         mail: {uid}@example.org\nuserPassword: {password}\n"
    )
}

/// The shared directory, or `None` (after saying why) without slapd;
/// panics instead under CI.
pub fn directory(test: &str) -> Option<&'static Slapd> {
    static SLAPD: OnceLock<Result<Slapd, String>> = OnceLock::new();
    match SLAPD.get_or_init(Slapd::start) {
        Ok(slapd) => Some(slapd),
        Err(why) => skip(test, why),
    }
}

/// A directory of the test's own (for restarts), or `None` as for
/// [`directory`].
pub fn own_directory(test: &str) -> Option<Slapd> {
    match Slapd::start() {
        Ok(slapd) => Some(slapd),
        Err(why) => skip(test, &why),
    }
}
