//! `mailbag migrate-uidls`: keeps the UIDLs another POP3 server showed,
//! for servers whose files say nothing mailbag can read (see
//! docs/MIGRATING.md). For each user it logs in to the old server over
//! POP3 (plain, STLS or implicit TLS; with a master user, as Dovecot's
//! `user*master` or a SASL authzid, or with the user's own password),
//! takes its UIDL and LIST answers, fetches (RETR) each message whose size
//! some message here has, and matches messages by content: the SHA-256 of
//! the canonical form, CRLF line endings and a final CRLF, after
//! dot-unstuffing ([`ContentKey`]), the same on both sides whatever either
//! stores. Equal contents pair in order (old message number, base name
//! here). The matched UIDLs are recorded with
//! [`MaildirStore::record_uidls`], which keeps a UIDL already recorded or
//! shown and refuses one another message has. A dry run records nothing
//! and says how many messages would keep their UIDL.
//!
//! The old server's answers are hostile input: every line is bounded
//! ([`MAX_LINE_OCTETS`]), the message count and each message's octets are
//! bounded ([`Limits`]), every command has a deadline covering its write
//! and its reply, UIDLs must be RFC 1939's (1 to 70 characters 0x21 to
//! 0x7E, unique), message numbers must be in range, and what the server
//! says is shown only as a short printable excerpt. Nothing is ever
//! deleted on the old server: the session ends with QUIT without a DELE
//! (RETR may mark messages seen there, as any client's fetch does).

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use base64::prelude::{Engine as _, BASE64_STANDARD};
use mailbag_proto::dot::Unstuffer;
use mailbag_proto::secret::Secret;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::store::maildir::{ContentKey, MaildirStore, RecordedUidls};
use crate::store::StoreError;

/// The longest status or listing line taken from the old server. RFC
/// 2449 §4 bounds responses at 512 octets; some servers' `-ERR` texts run
/// longer, none near this.
pub const MAX_LINE_OCTETS: usize = 1024;

/// How much of an old server's reply text a report shows.
const EXCERPT_CHARS: usize = 120;

/// Octets read from the old server at a time.
const READ_OCTETS: usize = 64 * 1024;

/// The largest passwords file read.
const MAX_PASSWORDS_FILE_OCTETS: u64 = 4 * 1024 * 1024;

/// How to reach the old server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Security {
    /// No TLS (the password crosses the network in the clear).
    Plain,
    /// RFC 2595 STLS on the plain port.
    Stls,
    /// RFC 8314 implicit TLS (port 995).
    Implicit,
}

/// The old server.
#[derive(Debug, Clone)]
pub struct Source {
    /// `host:port`.
    pub server: String,
    /// Plain, STLS or implicit TLS.
    pub security: Security,
    /// The name its certificate must carry (default: the host).
    pub tls_name: Option<String>,
    /// The CA certificates to trust (PEM); default: the system's bundle.
    pub ca_file: Option<PathBuf>,
}

/// How to log in to the old server as each user.
#[derive(Debug, Clone)]
pub enum Login {
    /// A master user, Dovecot style: `USER <user><separator><master>`
    /// and the master's password.
    MasterSeparator {
        /// The master user.
        master: String,
        /// Dovecot's `auth_master_user_separator` (often `*`).
        separator: String,
        /// The master's password.
        password: Secret<String>,
    },
    /// A master user naming the user as the SASL authorization identity
    /// (AUTH PLAIN `user NUL master NUL password`), as mailbag's
    /// `auth.master_users` and Dovecot both take.
    MasterAuthzid {
        /// The master user.
        master: String,
        /// The master's password.
        password: Secret<String>,
    },
    /// Each user's own password (USER/PASS).
    Passwords(HashMap<String, Secret<String>>),
}

/// The bounds on what the old server may make this command hold or wait.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Messages per maildrop (old server's and here).
    pub max_messages: usize,
    /// Octets of one message; a larger one is not matched.
    pub max_message_octets: u64,
    /// Deadline of each command (its write and its whole reply, a RETR's
    /// body included) and of connecting and the TLS handshake.
    pub timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_messages: 100_000,
            max_message_octets: 64 * 1024 * 1024,
            timeout: Duration::from_secs(60),
        }
    }
}

/// Why one user's UIDLs could not be taken over.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    /// The connection failed.
    #[error("old server: {0}")]
    Io(#[from] std::io::Error),
    /// A deadline passed.
    #[error("old server: no answer to {0} within the deadline")]
    Timeout(String),
    /// TLS could not be set up.
    #[error("TLS: {0}")]
    Tls(String),
    /// The old server answered `-ERR`.
    #[error("old server refused {command}: {reply:?}")]
    Refused {
        /// The command (a login shows no password).
        command: String,
        /// An excerpt of its answer.
        reply: String,
    },
    /// The old server's answer broke the protocol or a bound.
    #[error("old server: {0}")]
    Protocol(String),
    /// No way to log in as this user.
    #[error("no password for this user in the passwords file")]
    NoPassword,
    /// The local store failed.
    #[error("here: {0}")]
    Store(#[from] StoreError),
}

/// What happened for one user.
#[derive(Debug, Default)]
pub struct Report {
    /// The user.
    pub user: String,
    /// Messages on the old server.
    pub old_messages: usize,
    /// Messages here (keyed).
    pub local_messages: usize,
    /// Messages here left out (too large, unreadable, over the limit).
    pub local_skipped: usize,
    /// Old UIDLs not usable (not RFC 1939's, or repeated).
    pub unusable_uidls: usize,
    /// Messages here matched to one on the old server: they keep its
    /// UIDL (a dry run: would keep).
    pub matched: usize,
    /// What recording did (none in a dry run or after an error).
    pub recorded: Option<RecordedUidls>,
    /// Why the user was not finished.
    pub error: Option<String>,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(error) = &self.error {
            return write!(f, "{}: not migrated: {error}", self.user);
        }
        let verb = if self.recorded.is_some() {
            "keep"
        } else {
            "would keep"
        };
        write!(
            f,
            "{}: {} of {} messages here {verb} their UIDL (old server: {} messages",
            self.user, self.matched, self.local_messages, self.old_messages
        )?;
        if self.unusable_uidls > 0 {
            write!(f, ", {} unusable UIDLs", self.unusable_uidls)?;
        }
        write!(f, ")")?;
        if self.local_skipped > 0 {
            write!(f, "; {} messages here not compared", self.local_skipped)?;
        }
        if let Some(r) = &self.recorded {
            write!(
                f,
                "; recorded {}, already recorded {}, refused {}",
                r.recorded, r.kept, r.refused
            )?;
        }
        Ok(())
    }
}

/// Takes over `user`'s UIDLs from the old server (see the module
/// documentation). Never fails: a failure is the report's `error`.
pub async fn migrate_user(
    store: &MaildirStore,
    source: &Source,
    login: &Login,
    limits: Limits,
    user: &str,
    dry_run: bool,
) -> Report {
    let mut report = Report {
        user: user.to_string(),
        ..Report::default()
    };
    if let Err(e) = migrate_into(store, source, login, limits, user, dry_run, &mut report).await {
        report.recorded = None;
        report.error = Some(e.to_string());
    }
    report
}

async fn migrate_into(
    store: &MaildirStore,
    source: &Source,
    login: &Login,
    limits: Limits,
    user: &str,
    dry_run: bool,
    report: &mut Report,
) -> Result<(), MigrateError> {
    let local = store
        .fingerprints(user, limits.max_messages, limits.max_message_octets)
        .await?;
    report.local_messages = local.messages.len();
    report.local_skipped = local.skipped;
    let mut by_key: HashMap<[u8; 32], VecDeque<Vec<u8>>> = HashMap::new();
    let mut sizes: HashSet<u64> = HashSet::new();
    for m in local.messages {
        sizes.insert(m.size);
        by_key.entry(m.key).or_default().push_back(m.base);
    }

    let mut old = Client::connect(source, limits.timeout).await?;
    old.log_in(login, user).await?;
    let listing = old.listing(limits).await?;
    report.old_messages = listing.count;
    report.unusable_uidls = listing.unusable;
    let mut pairs: Vec<(Vec<u8>, String)> = Vec::new();
    for (number, uidl, size) in listing.messages {
        if !sizes.contains(&size) || size > limits.max_message_octets {
            continue;
        }
        let (key, octets) = old.retrieve_key(number, limits).await?;
        if octets != size {
            // The server's LIST and RETR disagree: its UIDL for this
            // message is taken only if the content matches, as always.
            tracing::debug!(
                number,
                size,
                octets,
                "old server's LIST size differs from RETR"
            );
        }
        if let Some(base) = by_key.get_mut(&key).and_then(VecDeque::pop_front) {
            pairs.push((base, uidl));
        }
    }
    old.quit().await;
    report.matched = pairs.len();
    if !dry_run {
        report.recorded = Some(store.record_uidls(user, pairs).await?);
    }
    Ok(())
}

/// Reads a passwords file: `user:password` lines (the password is the
/// rest of the line; blank lines and `#` comments are skipped).
pub fn read_passwords(path: &Path) -> Result<HashMap<String, Secret<String>>, String> {
    let text = read_secret_file(path)?;
    let mut out = HashMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.trim().is_empty() || line.trim_start().starts_with('#') {
            continue;
        }
        let Some((user, password)) = line.split_once(':') else {
            return Err(format!("{}:{}: not user:password", path.display(), i + 1));
        };
        if password.chars().any(|c| c == '\0') || password.is_empty() {
            return Err(format!(
                "{}:{}: empty password or NUL",
                path.display(),
                i + 1
            ));
        }
        out.insert(user.to_string(), Secret::new(password.to_string()));
    }
    Ok(out)
}

/// The first line of `path`: a master password.
pub fn read_password(path: &Path) -> Result<Secret<String>, String> {
    let text = read_secret_file(path)?;
    let line = text.lines().next().unwrap_or("");
    let line = line.strip_suffix('\r').unwrap_or(line);
    if line.is_empty() || line.contains('\0') {
        return Err(format!("{}: no password on its first line", path.display()));
    }
    Ok(Secret::new(line.to_string()))
}

fn read_secret_file(path: &Path) -> Result<String, String> {
    use std::io::Read;
    let file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut text = String::new();
    file.take(MAX_PASSWORDS_FILE_OCTETS)
        .read_to_string(&mut text)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(text)
}

/// What UIDL and LIST said, checked.
#[derive(Debug, Default, PartialEq, Eq)]
struct Listing {
    /// STAT's count.
    count: usize,
    /// (message number, UIDL, size), by message number.
    messages: Vec<(usize, String, u64)>,
    /// UIDL lines refused (a UIDL RFC 1939 does not allow, or repeated).
    unusable: usize,
}

/// Whether `uidl` is one RFC 1939 §7 allows: 1 to 70 characters in the
/// range 0x21 to 0x7E.
fn is_uidl(uidl: &[u8]) -> bool {
    (1..=70).contains(&uidl.len()) && uidl.iter().all(|b| (0x21..=0x7e).contains(b))
}

/// A `<number> <value>` listing line with the number in 1..=`count`.
fn listing_line(line: &[u8], count: usize) -> Result<(usize, &[u8]), MigrateError> {
    let bad = || MigrateError::Protocol(format!("bad listing line {:?}", excerpt(line)));
    let mut parts = line.splitn(2, |&b| b == b' ');
    let number = parts.next().ok_or_else(bad)?;
    let value = parts.next().ok_or_else(bad)?;
    let number: usize = std::str::from_utf8(number)
        .ok()
        .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|n| n.parse().ok())
        .ok_or_else(bad)?;
    if number == 0 || number > count {
        return Err(MigrateError::Protocol(format!(
            "message number {number} out of range 1..={count}"
        )));
    }
    Ok((number, value.trim_ascii()))
}

/// Joins UIDL and LIST lines into a [`Listing`].
fn join_listing(
    count: usize,
    uidl_lines: &[Vec<u8>],
    list_lines: &[Vec<u8>],
) -> Result<Listing, MigrateError> {
    let mut sizes: HashMap<usize, u64> = HashMap::new();
    for line in list_lines {
        let (number, size) = listing_line(line, count)?;
        let size = std::str::from_utf8(size)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| MigrateError::Protocol(format!("bad size {:?}", excerpt(line))))?;
        if sizes.insert(number, size).is_some() {
            return Err(MigrateError::Protocol(format!(
                "message {number} listed twice"
            )));
        }
    }
    let mut listing = Listing {
        count,
        ..Listing::default()
    };
    let mut numbers: HashSet<usize> = HashSet::new();
    let mut lines: Vec<(usize, &[u8])> = Vec::with_capacity(uidl_lines.len());
    let mut times: HashMap<&[u8], usize> = HashMap::new();
    for line in uidl_lines {
        let (number, uidl) = listing_line(line, count)?;
        if !numbers.insert(number) {
            return Err(MigrateError::Protocol(format!(
                "message {number} listed twice"
            )));
        }
        *times.entry(uidl).or_default() += 1;
        lines.push((number, uidl));
    }
    for (number, uidl) in lines {
        // A UIDL the clients could not have kept, or one two messages
        // share (the clients cannot tell them apart, so neither message
        // may keep it): not carried over.
        if !is_uidl(uidl) || times[uidl] > 1 {
            listing.unusable += 1;
            continue;
        }
        let Some(&size) = sizes.get(&number) else {
            continue;
        };
        let uidl = String::from_utf8(uidl.to_vec()).expect("checked ASCII");
        listing.messages.push((number, uidl, size));
    }
    listing.messages.sort_by_key(|m| m.0);
    Ok(listing)
}

/// A printable excerpt of something the old server sent.
fn excerpt(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes)
        .chars()
        .take(EXCERPT_CHARS)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// A POP3 client session with the old server.
struct Client {
    io: BufReader<Box<dyn Io>>,
    timeout: Duration,
}

impl Client {
    async fn connect(source: &Source, timeout: Duration) -> Result<Client, MigrateError> {
        let within = |what: &str| MigrateError::Timeout(what.to_string());
        let tcp = tokio::time::timeout(timeout, TcpStream::connect(&source.server))
            .await
            .map_err(|_| within("connect"))??;
        let _ = tcp.set_nodelay(true);
        let io: Box<dyn Io> = match source.security {
            Security::Implicit => tls(source, Box::new(tcp), timeout).await?,
            _ => Box::new(tcp),
        };
        let mut client = Client {
            io: BufReader::with_capacity(READ_OCTETS, io),
            timeout,
        };
        client.status("the greeting", None).await?;
        if source.security == Security::Stls {
            client.status("STLS", Some("STLS")).await?;
            // RFC 2595 §4 (and CVE-2011-0411's lesson): nothing sent before
            // the handshake may be read as if it came over TLS.
            if !client.io.buffer().is_empty() {
                return Err(MigrateError::Protocol(
                    "sent data after its STLS answer, before the TLS handshake".into(),
                ));
            }
            let plain = client.io.into_inner();
            client = Client {
                io: BufReader::with_capacity(READ_OCTETS, tls(source, plain, timeout).await?),
                timeout,
            };
        }
        Ok(client)
    }

    /// Sends `command` (unless `None`) and reads its status line; `shown`
    /// names it in errors (without secrets).
    async fn status(&mut self, shown: &str, command: Option<&str>) -> Result<String, MigrateError> {
        let timeout = self.timeout;
        let line = tokio::time::timeout(timeout, async {
            if let Some(command) = command {
                let io = self.io.get_mut();
                io.write_all(command.as_bytes()).await?;
                io.write_all(b"\r\n").await?;
                io.flush().await?;
            }
            self.line().await
        })
        .await
        .map_err(|_| MigrateError::Timeout(shown.to_string()))??;
        if let Some(rest) = line.strip_prefix(b"+OK") {
            return Ok(excerpt(rest).trim().to_string());
        }
        Err(MigrateError::Refused {
            command: shown.to_string(),
            reply: excerpt(&line),
        })
    }

    /// One line, without its line ending; at most [`MAX_LINE_OCTETS`].
    async fn line(&mut self) -> Result<Vec<u8>, MigrateError> {
        let mut line = Vec::new();
        loop {
            let buf = self.io.fill_buf().await?;
            if buf.is_empty() {
                return Err(MigrateError::Protocol("closed the connection".into()));
            }
            let (take, done) = match memchr::memchr(b'\n', buf) {
                Some(i) => (i + 1, true),
                None => (buf.len(), false),
            };
            if line.len() + take > MAX_LINE_OCTETS + 2 {
                return Err(MigrateError::Protocol(format!(
                    "a line longer than {MAX_LINE_OCTETS} octets"
                )));
            }
            line.extend_from_slice(&buf[..take]);
            self.io.consume(take);
            if done {
                line.pop();
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                return Ok(line);
            }
        }
    }

    /// A multi-line answer's lines (unstuffed), at most `max_lines`.
    async fn lines(&mut self, shown: &str, max_lines: usize) -> Result<Vec<Vec<u8>>, MigrateError> {
        let timeout = self.timeout;
        tokio::time::timeout(timeout, async {
            let mut lines = Vec::new();
            loop {
                let line = self.line().await?;
                if line == b"." {
                    return Ok(lines);
                }
                if lines.len() >= max_lines {
                    return Err(MigrateError::Protocol(format!(
                        "{shown} lists more than {max_lines} messages"
                    )));
                }
                let line = match line.strip_prefix(b".") {
                    Some(rest) => rest.to_vec(),
                    None => line,
                };
                lines.push(line);
            }
        })
        .await
        .map_err(|_| MigrateError::Timeout(shown.to_string()))?
    }

    async fn log_in(&mut self, login: &Login, user: &str) -> Result<(), MigrateError> {
        // Names come from the passdb (no white space or control
        // characters); passwords from the administrator's files, checked
        // for NUL. A CR or LF would end the command early.
        let clean = |s: &str| !s.contains(['\r', '\n']);
        match login {
            Login::MasterSeparator {
                master,
                separator,
                password,
            } => {
                let name = format!("{user}{separator}{master}");
                if !clean(&name) || !clean(password.expose()) {
                    return Err(MigrateError::Protocol("a CR or LF in the login".into()));
                }
                self.status("USER", Some(&format!("USER {name}"))).await?;
                self.status("PASS", Some(&format!("PASS {}", password.expose())))
                    .await?;
            }
            Login::MasterAuthzid { master, password } => {
                let payload =
                    BASE64_STANDARD.encode(format!("{user}\0{master}\0{}", password.expose()));
                self.status("AUTH PLAIN", Some(&format!("AUTH PLAIN {payload}")))
                    .await?;
            }
            Login::Passwords(passwords) => {
                let password = passwords.get(user).ok_or(MigrateError::NoPassword)?;
                if !clean(password.expose()) {
                    return Err(MigrateError::Protocol("a CR or LF in the password".into()));
                }
                self.status("USER", Some(&format!("USER {user}"))).await?;
                self.status("PASS", Some(&format!("PASS {}", password.expose())))
                    .await?;
            }
        }
        Ok(())
    }

    async fn listing(&mut self, limits: Limits) -> Result<Listing, MigrateError> {
        let stat = self.status("STAT", Some("STAT")).await?;
        let count: usize = stat
            .split_whitespace()
            .next()
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| MigrateError::Protocol(format!("bad STAT answer {stat:?}")))?;
        if count > limits.max_messages {
            return Err(MigrateError::Protocol(format!(
                "{count} messages, more than --max-messages ({})",
                limits.max_messages
            )));
        }
        self.status("UIDL", Some("UIDL")).await?;
        let uidls = self.lines("UIDL", count).await?;
        self.status("LIST", Some("LIST")).await?;
        let sizes = self.lines("LIST", count).await?;
        join_listing(count, &uidls, &sizes)
    }

    /// RETR `number`: the [`ContentKey`] of what comes and its canonical
    /// size. More than `limits.max_message_octets` ends the session.
    async fn retrieve_key(
        &mut self,
        number: usize,
        limits: Limits,
    ) -> Result<([u8; 32], u64), MigrateError> {
        let shown = format!("RETR {number}");
        self.status(&shown, Some(&shown)).await?;
        let timeout = self.timeout;
        tokio::time::timeout(timeout, async {
            let mut unstuffer = Unstuffer::new();
            let mut key = ContentKey::new();
            let mut decoded = Vec::with_capacity(READ_OCTETS);
            let mut octets = 0u64;
            loop {
                let buf = self.io.fill_buf().await?;
                if buf.is_empty() {
                    return Err(MigrateError::Protocol(format!(
                        "closed the connection during {shown}"
                    )));
                }
                decoded.clear();
                let (used, done) = unstuffer.feed(buf, &mut decoded);
                self.io.consume(used);
                octets += decoded.len() as u64;
                // Bare LFs may double when canonical: the bound is on
                // what comes, with room for that.
                if octets > limits.max_message_octets.saturating_mul(2) {
                    return Err(MigrateError::Protocol(format!(
                        "{shown} sends more than --max-message-octets"
                    )));
                }
                key.feed(&decoded);
                if done {
                    return Ok(key.finish());
                }
            }
        })
        .await
        .map_err(|_| MigrateError::Timeout(format!("RETR {number}")))?
    }

    /// Ends the session; nothing was marked for deletion.
    async fn quit(mut self) {
        let _ = self.status("QUIT", Some("QUIT")).await;
    }
}

/// A TLS client over `io` for `source`, under the deadline.
async fn tls(
    source: &Source,
    io: Box<dyn Io>,
    timeout: Duration,
) -> Result<Box<dyn Io>, MigrateError> {
    let host = match &source.tls_name {
        Some(name) => name.clone(),
        None => host_of(&source.server).to_string(),
    };
    let name = ServerName::try_from(host.clone())
        .map_err(|e| MigrateError::Tls(format!("{host:?}: {e}")))?;
    let config = client_config(source.ca_file.as_deref())?;
    let connector = tokio_rustls::TlsConnector::from(config);
    let stream = tokio::time::timeout(timeout, connector.connect(name, io))
        .await
        .map_err(|_| MigrateError::Timeout("the TLS handshake".into()))?
        .map_err(|e| MigrateError::Tls(e.to_string()))?;
    Ok(Box::new(stream))
}

/// The host part of `host:port` (`[v6]:port` too).
fn host_of(server: &str) -> &str {
    let host = match server.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => server,
    };
    host.trim_start_matches('[').trim_end_matches(']')
}

/// System CA bundles, as Debian, Fedora and Alpine place them.
const SYSTEM_BUNDLES: [&str; 3] = [
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/cert.pem",
];

fn client_config(ca_file: Option<&Path>) -> Result<Arc<rustls::ClientConfig>, MigrateError> {
    let path = match ca_file {
        Some(path) => path.to_path_buf(),
        None => SYSTEM_BUNDLES
            .iter()
            .map(PathBuf::from)
            .find(|p| p.exists())
            .ok_or_else(|| MigrateError::Tls("no --ca-file and no system CA bundle".into()))?,
    };
    let bad = |e: &dyn fmt::Display| MigrateError::Tls(format!("{}: {e}", path.display()));
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(&path).map_err(|e| bad(&e))? {
        roots.add(cert.map_err(|e| bad(&e))?).map_err(|e| bad(&e))?;
    }
    if roots.is_empty() {
        return Err(bad(&"no certificate in the file"));
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| bad(&e))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(text: &[&str]) -> Vec<Vec<u8>> {
        text.iter().map(|l| l.as_bytes().to_vec()).collect()
    }

    #[test]
    fn listings_join_by_number_and_drop_what_clients_could_not_have_kept() {
        let uidl = lines(&["2 b", "1 a", "3 a", "4 ", "5 with space", "6 \u{e9}"]);
        let list = lines(&["1 10", "2 20", "3 30", "4 40", "5 50", "6 60"]);
        let l = join_listing(6, &uidl, &list).unwrap();
        assert_eq!(l.messages, [(2, "b".to_string(), 20)]);
        // "1 a" and "3 a" share a UIDL (neither keeps it); "4 " is empty,
        // "5 with space" and the non-ASCII one are not RFC 1939's.
        assert_eq!(l.unusable, 5);
        let long = format!("1 {}", "x".repeat(71));
        assert_eq!(
            join_listing(1, &lines(&[&long]), &lines(&["1 5"]))
                .unwrap()
                .unusable,
            1
        );
    }

    #[test]
    fn hostile_listings_are_refused() {
        for (uidl, list) in [
            (&["0 a"][..], &["1 1"][..]),
            (&["2 a"], &["1 1"]),
            (&["1 a", "1 b"], &["1 1"]),
            (&["1 a"], &["1 1", "1 2"]),
            (&["1 a"], &["1 -5"]),
            (&["x a"], &["1 1"]),
            (&["+1 a"], &["1 1"]),
            (&["1"], &["1 1"]),
            (&["99999999999999999999999 a"], &["1 1"]),
        ] {
            assert!(
                join_listing(1, &lines(uidl), &lines(list)).is_err(),
                "{uidl:?} {list:?}"
            );
        }
    }

    #[test]
    fn reports_say_what_would_happen_and_what_did() {
        let mut r = Report {
            user: "alice".into(),
            old_messages: 21,
            local_messages: 20,
            matched: 18,
            unusable_uidls: 1,
            ..Report::default()
        };
        assert_eq!(
            r.to_string(),
            "alice: 18 of 20 messages here would keep their UIDL \
             (old server: 21 messages, 1 unusable UIDLs)"
        );
        r.recorded = Some(RecordedUidls {
            recorded: 17,
            kept: 1,
            refused: 0,
        });
        assert!(r.to_string().contains("here keep their UIDL"));
        assert!(r
            .to_string()
            .ends_with("recorded 17, already recorded 1, refused 0"));
        r.error = Some("old server refused PASS: \"-ERR\"".into());
        assert!(r.to_string().starts_with("alice: not migrated: "));
    }

    #[test]
    fn excerpts_are_short_and_printable() {
        let e = excerpt(b"-ERR \x1b[31mred\r\n\0");
        assert_eq!(e, "-ERR ?[31mred???");
        assert_eq!(excerpt(&[b'x'; 5000]).len(), EXCERPT_CHARS);
        assert_eq!(host_of("mail.example.org:995"), "mail.example.org");
        assert_eq!(host_of("[::1]:110"), "::1");
    }
}
