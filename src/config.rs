//! Configuration: the TOML file that `mailbag serve` reads, validated at
//! start so that a mistake is refused with an error naming the key.
//!
//! Relative paths are taken relative to the directory of the config file,
//! so a config and its data can move together (the demo relies on this).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::net::cidr::Cidr;

/// Why a config could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Io {
        /// The config file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML or has unknown or mistyped keys.
    #[error("config file {path}: {message}")]
    Parse {
        /// The config file.
        path: PathBuf,
        /// The parser's message, which names the key and line.
        message: String,
    },
    /// A key has a value that cannot work.
    #[error("config key `{key}`: {message}")]
    Invalid {
        /// The dotted key, e.g. `store.root`.
        key: &'static str,
        /// What is wrong with it.
        message: String,
    },
}

/// The whole configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The POP3 listeners and advertised policies.
    #[serde(default)]
    pub pop3: Pop3Config,
    /// Where mail is kept.
    pub store: StoreConfig,
    /// How users are authenticated.
    pub auth: AuthConfig,
    /// Connection limits and timeouts.
    #[serde(default)]
    pub limits: LimitsConfig,
    /// LMTP listeners, for mail from an MTA.
    #[serde(default)]
    pub lmtp: LmtpConfig,
    /// Mailbox quotas, enforced at delivery.
    #[serde(default)]
    pub quota: QuotaConfig,
    /// Per-session transcripts for chosen users or client addresses.
    #[serde(default)]
    pub transcript: TranscriptConfig,
    /// The Prometheus metrics endpoint.
    #[serde(default)]
    pub metrics: MetricsConfig,
    /// The certificate for STLS and implicit TLS; without it, no TLS.
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// The process: whom to run as.
    #[serde(default)]
    pub server: ServerConfig,
    /// How log lines are written.
    #[serde(default)]
    pub log: LogConfig,
}

/// `[log]`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// `text` (one line per event, what fail2ban matches) or `json` (one
    /// JSON object per line, for log shippers). Read at start only.
    #[serde(default)]
    pub format: LogFormat,
}

/// `log.format`
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines (`tracing`'s default format).
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// `[server]`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Started as root, become this user once the ports are bound.
    #[serde(default)]
    pub user: Option<String>,
    /// The group to become (default: the user's primary group).
    #[serde(default)]
    pub group: Option<String>,
}

/// `[tls]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM file: the server certificate, then its intermediates.
    pub certificate: PathBuf,
    /// PEM file: the private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// `[metrics]`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Where to serve `GET /metrics` (keep it on loopback or a management
    /// network); no endpoint when unset.
    #[serde(default)]
    pub listen: Option<SocketAddr>,
}

/// `[transcript]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TranscriptConfig {
    /// Where transcripts are written (one file per session).
    #[serde(default)]
    pub dir: Option<PathBuf>,
    /// Users whose sessions are transcribed (from the line after login;
    /// the lines before it are kept in memory until then).
    #[serde(default)]
    pub users: Vec<String>,
    /// Client addresses whose sessions are transcribed from the greeting.
    #[serde(default)]
    pub addresses: Vec<IpAddr>,
    /// Largest transcript file, in octets; the rest of a session is cut.
    #[serde(default = "default_transcript_file_octets")]
    pub max_file_octets: u64,
    /// Most transcript files kept in `dir`; the oldest are removed.
    #[serde(default = "default_transcript_files")]
    pub max_files: usize,
}

impl Default for TranscriptConfig {
    fn default() -> Self {
        TranscriptConfig {
            dir: None,
            users: Vec::new(),
            addresses: Vec::new(),
            max_file_octets: default_transcript_file_octets(),
            max_files: default_transcript_files(),
        }
    }
}

fn default_transcript_file_octets() -> u64 {
    1024 * 1024
}
fn default_transcript_files() -> usize {
    1000
}

/// `[lmtp]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LmtpConfig {
    /// TCP addresses (port 24 in production). LMTP has no authentication:
    /// anyone who can connect can deliver, so keep these on loopback or a
    /// trusted network.
    #[serde(default)]
    pub listen: Vec<SocketAddr>,
    /// A Unix socket path (e.g. `/run/mailbag/lmtp.sock`); a stale socket
    /// file is replaced at start, and the socket gets mode 0660.
    #[serde(default)]
    pub socket: Option<PathBuf>,
    /// The largest message accepted, in octets (advertised as SIZE).
    #[serde(default = "default_max_message_octets")]
    pub max_message_octets: u64,
    /// Recipients accepted per transaction.
    #[serde(default = "default_max_recipients")]
    pub max_recipients: usize,
    /// LMTP connections open at once, all LMTP listeners together; apart
    /// from POP3's, so that neither can take the other's connections.
    #[serde(default = "default_lmtp_max_connections")]
    pub max_connections: usize,
    /// LMTP connections open at once from one address (TCP).
    #[serde(default = "default_lmtp_max_connections_per_address")]
    pub max_connections_per_address: u32,
    /// Octets of messages that all LMTP sessions together may hold while
    /// receiving them (at least room for one message of
    /// `max_message_octets`); past it, a message is answered 452 and its
    /// client retries later.
    #[serde(default = "default_lmtp_max_receiving_octets")]
    pub max_receiving_octets: u64,
}

impl Default for LmtpConfig {
    fn default() -> Self {
        LmtpConfig {
            listen: Vec::new(),
            socket: None,
            max_message_octets: default_max_message_octets(),
            max_recipients: default_max_recipients(),
            max_connections: default_lmtp_max_connections(),
            max_connections_per_address: default_lmtp_max_connections_per_address(),
            max_receiving_octets: default_lmtp_max_receiving_octets(),
        }
    }
}

/// One quota: 0 means unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Quota {
    /// Total CRLF octets a maildrop may hold.
    #[serde(default)]
    pub max_octets: u64,
    /// Messages a maildrop may hold.
    #[serde(default)]
    pub max_messages: u64,
}

/// `[quota]`: the default for every user, and `[quota.users."name"]`
/// overrides for single users.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuotaConfig {
    /// Total CRLF octets a maildrop may hold (0: unlimited).
    #[serde(default)]
    pub max_octets: u64,
    /// Messages a maildrop may hold (0: unlimited).
    #[serde(default)]
    pub max_messages: u64,
    /// Per-user quotas by canonical user name; a key left out of an
    /// override is unlimited for that user.
    #[serde(default)]
    pub users: BTreeMap<String, Quota>,
}

impl QuotaConfig {
    /// The quota that applies to `user` (a canonical user name).
    pub fn for_user(&self, user: &str) -> Quota {
        self.users.get(user).copied().unwrap_or(Quota {
            max_octets: self.max_octets,
            max_messages: self.max_messages,
        })
    }
}

/// `[pop3]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pop3Config {
    /// Addresses for plain POP3 (port 110 in production).
    #[serde(default)]
    pub listen: Vec<SocketAddr>,
    /// Addresses for POP3 over implicit TLS (RFC 8314; port 995).
    #[serde(default)]
    pub listen_tls: Vec<SocketAddr>,
    /// Load balancers (address prefixes) that send a PROXY protocol
    /// header (v1 or v2) first: a connection from one of them must start
    /// with one, and the client address it names is the one that limits
    /// and logs use. From anywhere else a PROXY header is not honoured.
    #[serde(default)]
    pub proxy_from: Vec<Cidr>,
    /// RFC 2449 EXPIRE value to advertise in CAPA (`NEVER` or days).
    #[serde(default)]
    pub expire: Option<String>,
    /// RFC 2449 LOGIN-DELAY seconds to advertise in CAPA.
    #[serde(default)]
    pub login_delay_secs: Option<u32>,
    /// SUMMARY and `mailbox inspect` flag messages larger than this, in
    /// octets: the ones a slow or limited client may never finish.
    #[serde(default = "default_summary_large_octets")]
    pub summary_large_octets: u64,
}

impl Default for Pop3Config {
    /// A server without a `[pop3]` table (LMTP only).
    fn default() -> Self {
        Pop3Config {
            listen: Vec::new(),
            listen_tls: Vec::new(),
            proxy_from: Vec::new(),
            expire: None,
            login_delay_secs: None,
            summary_large_octets: default_summary_large_octets(),
        }
    }
}

fn default_summary_large_octets() -> u64 {
    10 * 1024 * 1024
}

/// The kind of store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    /// Maildir directories on a local file system.
    Maildir,
    /// A PostgreSQL database shared by many nodes (users, maildrops and
    /// messages); `store.url` says where.
    Postgres,
    /// mbox spool files, one per user, as in `/var/mail`; `[store.mbox]`
    /// says where and how they are locked.
    Mbox,
}

/// `[store.mbox]`: the mbox spools of `store.kind = "mbox"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MboxConfig {
    /// A user's spool: an absolute path whose file name holds `%u`, the
    /// user name.
    #[serde(default = "default_mbox_path")]
    pub path: String,
    /// Take the dotlock `<spool>.lock` (Postfix, procmail and mutt do).
    #[serde(default = "yes")]
    pub dotlock: bool,
    /// Take an `fcntl` lock on the spool (Debian's Postfix does).
    #[serde(default = "yes")]
    pub fcntl: bool,
    /// Take an `flock` lock on the spool (for MTAs set up to use it).
    #[serde(default)]
    pub flock: bool,
    /// A dotlock older than this many seconds is stale and removed.
    #[serde(default = "default_stale_lock_secs")]
    pub stale_lock_secs: u64,
    /// How long to wait for the MTA's locks before a login or UPDATE
    /// fails with `[SYS/TEMP]`, in seconds.
    #[serde(default = "default_lock_wait_secs")]
    pub lock_wait_secs: u64,
    /// Where `mailbag mailbox quarantine` keeps the messages it takes out
    /// of the spools (a directory per user); not the spool directory.
    /// Unset: quarantine is refused.
    #[serde(default)]
    pub quarantine_dir: Option<std::path::PathBuf>,
}

impl Default for MboxConfig {
    fn default() -> Self {
        MboxConfig {
            path: default_mbox_path(),
            dotlock: true,
            fcntl: true,
            flock: false,
            stale_lock_secs: default_stale_lock_secs(),
            lock_wait_secs: default_lock_wait_secs(),
            quarantine_dir: None,
        }
    }
}

impl MboxConfig {
    /// The store's lock options.
    pub fn lock_options(&self) -> crate::store::mbox::LockOptions {
        crate::store::mbox::LockOptions {
            dotlock: self.dotlock,
            fcntl: self.fcntl,
            flock: self.flock,
            stale: std::time::Duration::from_secs(self.stale_lock_secs),
            wait: std::time::Duration::from_secs(self.lock_wait_secs),
        }
    }
}

fn default_mbox_path() -> String {
    crate::store::mbox::DEFAULT_PATH.into()
}
fn yes() -> bool {
    true
}
fn default_stale_lock_secs() -> u64 {
    300
}
fn default_lock_wait_secs() -> u64 {
    10
}

/// `[[store.clusters]]`: one PostgreSQL cluster of several.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// A short stable label (1-32 of `a-z 0-9 _ -`), as the directory
    /// records it: renaming a cluster strands its users.
    pub name: String,
    /// Its connection string, as `store.url`.
    pub url: String,
    /// Whether users never seen before may be placed here.
    #[serde(default = "default_true")]
    pub new_users: bool,
}

/// Most clusters in `store.clusters`.
pub const MAX_CLUSTERS: usize = 64;

/// Whether `name` may name a cluster: 1-32 of `a-z 0-9 _ -`.
pub fn valid_cluster_name(name: &str) -> bool {
    (1..=32).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// `[store]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// The store backend.
    #[serde(default = "default_store_kind")]
    pub kind: StoreKind,
    /// The data root under which every maildrop lives (Maildir only).
    #[serde(default)]
    pub root: PathBuf,
    /// Where a user's Maildir is: `{root}`, `{user}` (local part),
    /// `{domain}` and `{name}` (the whole user name) are replaced.
    #[serde(default = "default_path_template")]
    pub path: String,
    /// The `{domain}` of user names without `@`.
    #[serde(default = "default_domain")]
    pub default_domain: String,
    /// PostgreSQL only: a libpq connection string or URL. Several hosts
    /// and `target_session_attrs=read-write` let a node find the promoted
    /// primary after a failover, e.g. `postgresql://mailbag@db1,db2/mailbag?target_session_attrs=read-write`.
    #[serde(default)]
    pub url: Option<String>,
    /// PostgreSQL only: pooled connections per node for queries.
    #[serde(default = "default_pool_size")]
    pub pool_size: usize,
    /// PostgreSQL only: dedicated connections per node that hold the
    /// maildrop locks (each holds many).
    #[serde(default = "default_lock_connections")]
    pub lock_connections: usize,
    /// PostgreSQL only, instead of `url`: several clusters, each holding
    /// the maildrops of some users; the directory says which (see
    /// docs/DEPLOYMENT.md, "Several PostgreSQL clusters").
    #[serde(default)]
    pub clusters: Vec<ClusterConfig>,
    /// PostgreSQL with `clusters`: the database that holds the directory
    /// (which cluster holds which user) and the users' passwords; the
    /// first cluster's database when unset.
    #[serde(default)]
    pub directory_url: Option<String>,
    /// PostgreSQL only: the CA certificates (PEM) that sign the database
    /// server's certificate, for `sslmode=require` in `url` (which makes
    /// mailbag verify the certificate and host name). Without it, the
    /// system's CA bundle.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Maildir: show the UIDLs Dovecot's POP3 server showed, read from
    /// each Maildir's `dovecot-uidlist` (read only, never written), for
    /// messages Dovecot listed; also used by `mailbag import --from
    /// maildir:`. See docs/MIGRATING.md.
    #[serde(default)]
    pub uidl_dovecot: bool,
    /// The `pop3_uidl_format` Dovecot was configured with (its default,
    /// `%08Xu%08Xv`, unless `doveconf pop3_uidl_format` says otherwise):
    /// `%u`, `%v`, `%f`, `%g` with Dovecot's width, offset and `X`, `U`,
    /// `L`, `R`, `T`, `M` modifiers.
    #[serde(default = "default_uidl_dovecot_format")]
    pub uidl_dovecot_format: String,
    /// Maildir: take a message's UIDL from its `X-UIDL:` header when it
    /// is a valid one (qpopper, UW ipop3d, Dovecot's `pop3_reuse_xuidl`).
    #[serde(default)]
    pub uidl_x_header: bool,
    /// Maildir: show the UIDLs Courier's POP3 server showed, read from
    /// each Maildir's `courierpop3dsizelist` (read only).
    #[serde(default)]
    pub uidl_courier: bool,
    /// mbox only: where the spools are and how they are locked.
    #[serde(default)]
    pub mbox: MboxConfig,
}

fn default_uidl_dovecot_format() -> String {
    mailbag_uidl_default_format().to_string()
}

fn mailbag_uidl_default_format() -> &'static str {
    crate::store::maildir::DOVECOT_DEFAULT_UIDL_FORMAT
}

impl StoreConfig {
    /// Where UIDLs another server showed come from, as configured (after
    /// [`Config::validate`], which refuses a bad template).
    pub fn uidl_sources(&self) -> crate::store::maildir::UidlSources {
        crate::store::maildir::UidlSources {
            dovecot: if self.uidl_dovecot {
                crate::store::maildir::DovecotUidlFormat::parse(&self.uidl_dovecot_format).ok()
            } else {
                None
            },
            x_uidl: self.uidl_x_header,
            courier: self.uidl_courier,
        }
    }
}

/// `[auth]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// Where users come from: `passwd_file` (the default) or `pam`, the
    /// machine's own accounts (a build with the `pam` feature).
    #[serde(default)]
    pub kind: AuthKind,
    /// `[auth.pam]`, for `kind = "pam"`.
    #[serde(default)]
    pub pam: PamConfig,
    /// A passwd-file in Dovecot's format (Maildir store; with the
    /// PostgreSQL store, users are in the database).
    #[serde(default)]
    pub passwd_file: PathBuf,
    /// How long a failed login waits before its `-ERR`, in milliseconds.
    #[serde(default = "default_failure_delay_ms")]
    pub failure_delay_ms: u64,
    /// Failed logins per connection before it is closed.
    #[serde(default = "default_max_failures")]
    pub max_failures: u32,
    /// The longest delay before answering a failed login: failures beyond
    /// the third from one address or for one user double the delay up to
    /// this, in milliseconds.
    #[serde(default = "default_max_failure_delay_ms")]
    pub max_failure_delay_ms: u64,
    /// How long a failed login is remembered, in seconds.
    #[serde(default = "default_failure_window_secs")]
    pub failure_window_secs: u64,
    /// Failed logins from one address within the window before the
    /// address is refused for `address_block_secs`.
    #[serde(default = "default_max_failures_per_address")]
    pub max_failures_per_address: u32,
    /// How long an address with too many failures is refused, in seconds.
    #[serde(default = "default_address_block_secs")]
    pub address_block_secs: u64,
    /// Allow USER/PASS and APOP on unencrypted connections from any
    /// address. Without it, only loopback clients may use them.
    #[serde(default)]
    pub allow_plaintext: bool,
    /// Users who may open another user's maildrop by naming it as the
    /// SASL authorization identity (AUTH PLAIN or SCRAM). Everyone else
    /// is refused an authzid other than themselves.
    #[serde(default)]
    pub master_users: Vec<String>,
    /// Whether user names match whatever the letter case (ASCII letters,
    /// as Dovecot's `auth_username_format = %Ln`): `P1` and `p1` are one
    /// user at LMTP, `mailbag deliver`, USER, APOP and SASL. On by
    /// default; a passwd-file holding two names that differ only in case
    /// is then refused. Read at start (a restart changes it).
    #[serde(default = "default_true")]
    pub case_insensitive_names: bool,
    /// Client networks that may use plaintext logins without TLS.
    #[serde(default = "default_trusted_networks")]
    pub trusted_networks: Vec<Cidr>,
    /// The verified-credential cache: seconds a successful password check
    /// is reused for the same user, password and stored secret without
    /// hashing again (for clients that poll every minute). 0, the
    /// default, turns it off. Read at start (a restart changes it).
    #[serde(default)]
    pub cache_secs: u64,
    /// At most this many successes are kept.
    #[serde(default = "default_cache_entries")]
    pub cache_entries: usize,
    /// The server secret, from which SCRAM-SHA-256 salts and keys are
    /// made up for names without keys of their own, so that they are the
    /// same after a restart and on every node. Made at first start (mode
    /// 0600) if missing; copy it to every node that serves the same users.
    /// Relative to the config file's directory.
    #[serde(default = "default_secret_file")]
    pub secret_file: PathBuf,
    /// Users in an LDAP directory instead of the passwd-file.
    #[serde(default)]
    pub ldap: Option<LdapConfig>,
    /// Users in the administrator's own SQL table instead of the
    /// passwd-file.
    #[serde(default)]
    pub sql: Option<SqlConfig>,
    /// Re-hash a user's password to this scheme (e.g. "ARGON2ID") after a
    /// successful login against a legacy hash (MD5-CRYPT, DES crypt,
    /// yescrypt, SSHA, SHA, PLAIN-MD5, …), where the passdb can be written
    /// (the passwd-file, mailbag's PostgreSQL schema). Off unless set.
    /// Read at start (a restart changes it).
    #[serde(default)]
    pub rehash_to: Option<String>,
    /// `[auth.oauth]`: OAuth 2.0 bearer tokens (OAUTHBEARER, XOAUTH2),
    /// offered over TLS only when this table is present.
    #[serde(default)]
    pub oauth: Option<crate::auth::oauth::OAuthConfig>,
}

impl AuthConfig {
    /// Whether users come from the passwd-file: not from PAM, LDAP or SQL.
    pub fn users_from_passwd_file(&self) -> bool {
        self.kind == AuthKind::PasswdFile && self.ldap.is_none() && self.sql.is_none()
    }

    /// `auth.rehash_to` as a scheme; `None` when unset (or invalid, which
    /// [`Config::validate`] refuses).
    pub fn rehash_scheme(&self) -> Option<crate::auth::scheme::Scheme> {
        self.rehash_to.as_deref().and_then(|name| name.parse().ok())
    }
}

/// How the LDAP passdb checks a password.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LdapMode {
    /// Bind as the user: the directory checks the password.
    Bind,
    /// Read the password attribute with the service account and check
    /// it here.
    Lookup,
}

/// `[auth.ldap]`. In templates, `%u` is the user name, `%n` its local
/// part, `%d` its domain and `%%` a `%`; each is escaped for where it
/// goes (RFC 4515 in filters, RFC 4514 in DNs).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LdapConfig {
    /// `ldap://host:389` or `ldaps://host:636`.
    pub url: String,
    /// Upgrade `ldap://` connections with StartTLS.
    #[serde(default)]
    pub starttls: bool,
    /// The CA certificates (PEM) that the directory's certificate must
    /// chain to; the system's bundle without it.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// `bind` or `lookup`.
    pub mode: LdapMode,
    /// The service account that searches (and, in lookup mode, reads the
    /// password attribute); anonymous without it.
    #[serde(default)]
    pub bind_dn: Option<String>,
    /// The service account's password.
    #[serde(default)]
    pub bind_password: Option<String>,
    /// Where users are searched.
    #[serde(default)]
    pub base: String,
    /// The search filter, e.g. `(&(objectClass=inetOrgPerson)(mail=%u))`.
    #[serde(default)]
    pub user_filter: Option<String>,
    /// The user's DN without a search, e.g. `uid=%n,ou=people,dc=example,dc=org`.
    #[serde(default)]
    pub user_dn: Option<String>,
    /// Lookup mode: the attribute holding the `{SCHEME}` hash.
    #[serde(default = "default_ldap_password_attribute")]
    pub password_attribute: String,
    /// The attribute whose value is the canonical user name (the
    /// maildrop's name), e.g. `mail` or `uid`; the name as given
    /// (folded) without it.
    #[serde(default)]
    pub name_attribute: Option<String>,
    /// The attribute whose value is the user's maildrop, a path relative
    /// to `store.root` (e.g. `example.org/alice/`), used instead of
    /// `store.path`; a value that is not a relative path of plain names
    /// refuses the user (see docs/DEPLOYMENT.md).
    #[serde(default)]
    pub maildrop_attribute: Option<String>,
    /// The attribute whose value is the user's quota in octets (`k`, `M`,
    /// `G`, `T` multipliers taken; 0 unlimited), over `[quota]`.
    #[serde(default)]
    pub quota_attribute: Option<String>,
    /// Connections open at most (each kind: service and user binds).
    #[serde(default = "default_ext_pool_size")]
    pub pool_size: usize,
    /// The deadline for one directory operation (connect, bind, search),
    /// in seconds.
    #[serde(default = "default_ext_timeout_secs")]
    pub timeout_secs: u64,
    /// Lookup mode: offer SCRAM-SHA-256 (every user's attribute holds
    /// `{SCRAM-SHA-256}` keys or a plaintext-equivalent secret).
    #[serde(default)]
    pub offer_scram: bool,
}

/// `[auth.sql]`: the administrator's own queries. The one parameter, the
/// user name, is bound: `$1` for PostgreSQL, `?` for MySQL/MariaDB.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SqlConfig {
    /// `postgresql://...` (or `host=... dbname=...`) or `mysql://...`.
    pub url: String,
    /// Returns the column `password` (a `{SCHEME}` or `$id$` hash) and
    /// optionally `user` (the canonical name), at most one row.
    pub password_query: String,
    /// Asked with the canonical name after `password_query` has found
    /// the user: at most one row with the columns `maildir` (the maildrop,
    /// relative to `store.root`), `quota` (octets, 0 unlimited) and
    /// `quota_messages`, each optional and NULL meaning "as configured".
    #[serde(default)]
    pub user_query: Option<String>,
    /// The CA certificates (PEM) for TLS connections.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Connections open at most.
    #[serde(default = "default_ext_pool_size")]
    pub pool_size: usize,
    /// The deadline for one query (connecting included), in seconds.
    #[serde(default = "default_ext_timeout_secs")]
    pub timeout_secs: u64,
    /// Offer SCRAM-SHA-256 (every stored value is `{SCRAM-SHA-256}` keys
    /// or plaintext-equivalent).
    #[serde(default)]
    pub offer_scram: bool,
}

fn default_ldap_password_attribute() -> String {
    "userPassword".into()
}
fn default_ext_pool_size() -> usize {
    8
}
fn default_ext_timeout_secs() -> u64 {
    5
}

/// `auth.kind`
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthKind {
    /// `auth.passwd_file` (or the PostgreSQL store's own users).
    #[default]
    PasswdFile,
    /// System accounts through PAM.
    Pam,
}

/// `[auth.pam]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PamConfig {
    /// The PAM service: `/etc/pam.d/<service>`.
    #[serde(default = "default_pam_service")]
    pub service: String,
    /// Accounts with a lower UID (root, system and service accounts) are
    /// refused like a wrong password.
    #[serde(default = "default_pam_min_uid")]
    pub min_uid: u32,
    /// The longest a PAM conversation may take, in seconds, before the
    /// login fails with `[SYS/TEMP]`.
    #[serde(default = "default_pam_timeout_secs")]
    pub timeout_secs: u64,
}

impl Default for PamConfig {
    fn default() -> Self {
        PamConfig {
            service: default_pam_service(),
            min_uid: default_pam_min_uid(),
            timeout_secs: default_pam_timeout_secs(),
        }
    }
}

fn default_pam_service() -> String {
    "mailbag".into()
}
fn default_pam_min_uid() -> u32 {
    1000
}
fn default_pam_timeout_secs() -> u64 {
    10
}

/// `[limits]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Concurrent connections, all listeners together.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Idle seconds allowed before login.
    #[serde(default = "default_authorization_timeout_secs")]
    pub authorization_timeout_secs: u64,
    /// RFC 1939 §3 autologout: idle seconds allowed after login (the RFC
    /// asks for at least 600).
    #[serde(default = "default_autologout_secs")]
    pub autologout_secs: u64,
    /// Unknown or malformed commands before the connection is closed.
    #[serde(default = "default_max_bad_commands")]
    pub max_bad_commands: u32,
    /// Connections open at once from one client address.
    #[serde(default = "default_max_connections_per_address")]
    pub max_connections_per_address: u32,
    /// Connections not yet logged in, all addresses together, so that idle
    /// sockets before login cannot take every connection.
    #[serde(default = "default_max_unauthenticated")]
    pub max_unauthenticated: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_connections: default_max_connections(),
            authorization_timeout_secs: default_authorization_timeout_secs(),
            autologout_secs: default_autologout_secs(),
            max_bad_commands: default_max_bad_commands(),
            max_connections_per_address: default_max_connections_per_address(),
            max_unauthenticated: default_max_unauthenticated(),
        }
    }
}

fn default_store_kind() -> StoreKind {
    StoreKind::Maildir
}
fn default_pool_size() -> usize {
    16
}
fn default_lock_connections() -> usize {
    2
}
fn default_path_template() -> String {
    "{root}/{domain}/{user}/Maildir".into()
}
fn default_domain() -> String {
    "localhost".into()
}
fn default_trusted_networks() -> Vec<Cidr> {
    ["127.0.0.0/8", "::1/128"]
        .iter()
        .filter_map(|s| s.parse().ok())
        .collect()
}
fn default_secret_file() -> PathBuf {
    PathBuf::from("mailbag.secret")
}
fn default_true() -> bool {
    true
}

fn default_cache_entries() -> usize {
    100_000
}

fn default_failure_delay_ms() -> u64 {
    2000
}
fn default_max_failure_delay_ms() -> u64 {
    30_000
}
fn default_failure_window_secs() -> u64 {
    600
}
fn default_max_failures_per_address() -> u32 {
    10
}
fn default_address_block_secs() -> u64 {
    300
}
fn default_max_failures() -> u32 {
    3
}
fn default_max_connections() -> usize {
    10_000
}
fn default_authorization_timeout_secs() -> u64 {
    120
}
fn default_autologout_secs() -> u64 {
    600
}
fn default_max_connections_per_address() -> u32 {
    100
}
fn default_max_unauthenticated() -> usize {
    1000
}
fn default_max_bad_commands() -> u32 {
    20
}
fn default_max_message_octets() -> u64 {
    // Postfix's default message_size_limit.
    10_240_000
}
fn default_lmtp_max_connections() -> usize {
    // Postfix delivers with at most 20 processes per destination by
    // default; room for several MTAs and retries.
    200
}
fn default_lmtp_max_connections_per_address() -> u32 {
    100
}
fn default_lmtp_max_receiving_octets() -> u64 {
    256 * 1024 * 1024
}
fn default_max_recipients() -> usize {
    // RFC 5321 §4.5.3.1.8: at least 100 must be accepted.
    100
}

impl Config {
    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Config::parse(&text, base).map_err(|e| match e {
            ConfigError::Parse { message, .. } => ConfigError::Parse {
                path: path.to_path_buf(),
                message,
            },
            other => other,
        })
    }

    /// Parses and validates config text; relative paths are resolved
    /// against `base`.
    pub fn parse(text: &str, base: &Path) -> Result<Config, ConfigError> {
        let mut config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: PathBuf::new(),
            message: e.to_string().trim_end().to_string(),
        })?;
        // An empty path is a missing key (the PostgreSQL store needs
        // neither); validate() says so when it matters.
        if !config.store.root.as_os_str().is_empty() {
            config.store.root = absolute(base, &config.store.root);
        }
        if !config.auth.passwd_file.as_os_str().is_empty() {
            config.auth.passwd_file = absolute(base, &config.auth.passwd_file);
        }
        config.auth.secret_file = absolute(base, &config.auth.secret_file);
        if let Some(ca) = config.auth.ldap.as_mut().and_then(|l| l.ca_file.as_mut()) {
            *ca = absolute(base, ca);
        }
        if let Some(ca) = config.auth.sql.as_mut().and_then(|s| s.ca_file.as_mut()) {
            *ca = absolute(base, ca);
        }
        if let Some(oauth) = &mut config.auth.oauth {
            oauth.jwks_file = oauth.jwks_file.as_deref().map(|f| absolute(base, f));
            oauth.ca_file = oauth.ca_file.as_deref().map(|f| absolute(base, f));
        }
        if let Some(dir) = &config.transcript.dir {
            config.transcript.dir = Some(absolute(base, dir));
        }
        if let Some(socket) = &config.lmtp.socket {
            config.lmtp.socket = Some(absolute(base, socket));
        }
        if let Some(ca) = &config.store.ca_file {
            config.store.ca_file = Some(absolute(base, ca));
        }
        if let Some(tls) = &mut config.tls {
            tls.certificate = absolute(base, &tls.certificate);
            tls.key = absolute(base, &tls.key);
        }
        config.validate()?;
        Ok(config)
    }

    /// `[auth.ldap]` and `[auth.sql]`: one password database at a time.
    fn validate_external_passdb(&self) -> Result<(), ConfigError> {
        let invalid = |key, message: &str| {
            Err(ConfigError::Invalid {
                key,
                message: message.to_string(),
            })
        };
        if self.auth.ldap.is_some() && self.auth.sql.is_some() {
            return invalid("auth.sql", "give [auth.ldap] or [auth.sql], not both");
        }
        if self.auth.kind == AuthKind::Pam && (self.auth.ldap.is_some() || self.auth.sql.is_some())
        {
            return invalid(
                "auth.kind",
                "pam takes users from the system; remove [auth.ldap] and [auth.sql]",
            );
        }
        if (self.auth.ldap.is_some() || self.auth.sql.is_some())
            && !self.auth.passwd_file.as_os_str().is_empty()
        {
            return invalid(
                "auth.passwd_file",
                "users come from [auth.ldap] or [auth.sql]; remove passwd_file",
            );
        }
        if let Some(ldap) = &self.auth.ldap {
            if !(ldap.url.starts_with("ldap://") || ldap.url.starts_with("ldaps://")) {
                return invalid("auth.ldap.url", "must start with ldap:// or ldaps://");
            }
            if ldap.starttls && ldap.url.starts_with("ldaps://") {
                return invalid("auth.ldap.starttls", "ldaps:// is TLS already");
            }
            if ldap.user_filter.is_some() == ldap.user_dn.is_some() {
                return invalid("auth.ldap.user_filter", "give user_filter or user_dn (one)");
            }
            if ldap.mode == LdapMode::Lookup && ldap.user_filter.is_none() {
                return invalid(
                    "auth.ldap.user_filter",
                    "lookup mode searches: give user_filter",
                );
            }
            if ldap.user_filter.is_some() && ldap.base.is_empty() {
                return invalid("auth.ldap.base", "missing: where to search for users");
            }
            if ldap.bind_dn.is_some() != ldap.bind_password.is_some() {
                return invalid(
                    "auth.ldap.bind_password",
                    "give bind_dn and bind_password together",
                );
            }
            if ldap.mode == LdapMode::Bind && ldap.offer_scram {
                return invalid(
                    "auth.ldap.offer_scram",
                    "bind mode never sees a stored secret",
                );
            }
            if ldap.pool_size == 0 || ldap.pool_size > 1024 {
                return invalid("auth.ldap.pool_size", "must be 1 to 1024");
            }
            if ldap.timeout_secs == 0 || ldap.timeout_secs > 300 {
                return invalid("auth.ldap.timeout_secs", "must be 1 to 300");
            }
            for template in [&ldap.user_filter, &ldap.user_dn].into_iter().flatten() {
                if let Err(e) = crate::auth::ldap::check_template(template) {
                    return invalid("auth.ldap.user_filter", &e);
                }
            }
        }
        if let Some(sql) = &self.auth.sql {
            if crate::auth::sql::Backend::of_url(&sql.url).is_none() {
                return invalid(
                    "auth.sql.url",
                    "must start with postgresql://, postgres://, mysql:// or be \"host=... dbname=...\"",
                );
            }
            if sql.password_query.trim().is_empty() {
                return invalid("auth.sql.password_query", "missing");
            }
            if sql.pool_size == 0 || sql.pool_size > 1024 {
                return invalid("auth.sql.pool_size", "must be 1 to 1024");
            }
            if sql.timeout_secs == 0 || sql.timeout_secs > 300 {
                return invalid("auth.sql.timeout_secs", "must be 1 to 300");
            }
        }
        Ok(())
    }

    /// `[[store.clusters]]`: named, distinct, each with a URL, and one at
    /// least open to new users; `url` is then not given.
    fn validate_clusters(&self) -> Result<(), ConfigError> {
        let invalid = |key, message: &str| {
            Err(ConfigError::Invalid {
                key,
                message: message.to_string(),
            })
        };
        let clusters = &self.store.clusters;
        if self.store.url.is_some() {
            return invalid(
                "store.url",
                "give either url (one cluster) or [[store.clusters]], not both",
            );
        }
        if clusters.len() > MAX_CLUSTERS {
            return invalid("store.clusters", "at most 64 clusters");
        }
        for (i, c) in clusters.iter().enumerate() {
            if !valid_cluster_name(&c.name) {
                return invalid(
                    "store.clusters.name",
                    "must be 1 to 32 of a-z, 0-9, _ and -",
                );
            }
            if clusters[..i].iter().any(|o| o.name == c.name) {
                return invalid("store.clusters.name", "two clusters have the same name");
            }
            if c.url.is_empty() {
                return invalid("store.clusters.url", "missing");
            }
        }
        if !clusters.iter().any(|c| c.new_users) {
            return invalid(
                "store.clusters.new_users",
                "at least one cluster must take new users",
            );
        }
        if self.store.directory_url.as_deref() == Some("") {
            return invalid("store.directory_url", "empty");
        }
        if self.store.pool_size == 0 {
            return invalid("store.pool_size", "must be at least 1");
        }
        if self.store.lock_connections == 0 {
            return invalid("store.lock_connections", "must be at least 1");
        }
        Ok(())
    }

    /// Checks values that parse but cannot work; the error names the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key, message: &str| {
            Err(ConfigError::Invalid {
                key,
                message: message.to_string(),
            })
        };
        // A delivery-only node (LMTP, no POP3) is legitimate; a server
        // that listens on nothing is not.
        if self.pop3.listen.is_empty()
            && self.pop3.listen_tls.is_empty()
            && self.lmtp.listen.is_empty()
            && self.lmtp.socket.is_none()
        {
            return invalid(
                "pop3.listen",
                "no listener: give at least one of pop3.listen (e.g. [\"0.0.0.0:110\"]), \
                 pop3.listen_tls, lmtp.listen or lmtp.socket",
            );
        }
        if self.lmtp.max_message_octets == 0 {
            return invalid("lmtp.max_message_octets", "must be at least 1");
        }
        if self.lmtp.max_recipients == 0 {
            return invalid("lmtp.max_recipients", "must be at least 1");
        }
        if self.lmtp.max_connections == 0 {
            return invalid("lmtp.max_connections", "must be at least 1");
        }
        if self.lmtp.max_connections_per_address == 0 {
            return invalid("lmtp.max_connections_per_address", "must be at least 1");
        }
        if self
            .lmtp
            .socket
            .as_ref()
            .is_some_and(|p| p.file_name().is_none())
        {
            return invalid(
                "lmtp.socket",
                "must name a file, e.g. /run/mailbag/lmtp.sock",
            );
        }
        if !self.pop3.listen_tls.is_empty() && self.tls.is_none() {
            return invalid(
                "pop3.listen_tls",
                "implicit TLS needs a [tls] table with certificate and key",
            );
        }
        match self.store.kind {
            StoreKind::Maildir => {
                if self.store.root.as_os_str().is_empty() {
                    return invalid("store.root", "missing: the Maildir store needs a data root");
                }
                if self.auth.users_from_passwd_file()
                    && self.auth.passwd_file.as_os_str().is_empty()
                {
                    return invalid(
                        "auth.passwd_file",
                        "missing: the Maildir store takes its users from a passwd-file",
                    );
                }
            }
            StoreKind::Mbox => {
                if self.auth.users_from_passwd_file()
                    && self.auth.passwd_file.as_os_str().is_empty()
                {
                    return invalid(
                        "auth.passwd_file",
                        "missing: the mbox store takes its users from a passwd-file",
                    );
                }
                let m = &self.store.mbox;
                if let Err(e) = crate::store::mbox::check_template(&m.path) {
                    return invalid("store.mbox.path", &e);
                }
                if !(m.dotlock || m.fcntl || m.flock) {
                    return invalid(
                        "store.mbox.dotlock",
                        "at least one of dotlock, fcntl and flock must be on, or an MTA \
                         could write the spool while it is rewritten",
                    );
                }
                if m.stale_lock_secs == 0 || m.lock_wait_secs > 600 {
                    return invalid(
                        "store.mbox.stale_lock_secs",
                        "stale_lock_secs must be at least 1 and lock_wait_secs at most 600",
                    );
                }
                if let Some(dir) = &m.quarantine_dir {
                    if let Err(e) = crate::store::mbox::check_quarantine_dir(&m.path, dir) {
                        return invalid("store.mbox.quarantine_dir", &e);
                    }
                }
            }
            StoreKind::Postgres if !self.store.clusters.is_empty() => {
                self.validate_clusters()?;
            }
            StoreKind::Postgres => {
                if self.store.directory_url.is_some() {
                    return invalid("store.directory_url", "needs [[store.clusters]]");
                }
                if self.store.url.as_deref().is_none_or(str::is_empty) {
                    return invalid(
                        "store.url",
                        "missing: give the PostgreSQL connection string, e.g. \
                         \"postgresql://mailbag@db1,db2/mailbag?target_session_attrs=read-write\"",
                    );
                }
                if self.store.pool_size == 0 {
                    return invalid("store.pool_size", "must be at least 1");
                }
                if self.store.lock_connections == 0 {
                    return invalid("store.lock_connections", "must be at least 1");
                }
            }
        }
        let t = &self.store.path;
        if !(t.contains("{user}") || t.contains("{name}")) {
            return invalid(
                "store.path",
                "must contain {user} or {name}, or every user would share one maildrop",
            );
        }
        if let Some(rest) = t.split('{').skip(1).find(|p| {
            !["root}", "user}", "domain}", "name}"]
                .iter()
                .any(|k| p.starts_with(k))
        }) {
            return invalid(
                "store.path",
                &format!(
                    "unknown placeholder {{{}; use {{root}}, {{user}}, {{domain}} or {{name}}",
                    rest.split('}').next().unwrap_or(rest)
                ),
            );
        }
        if let Err(why) =
            crate::store::maildir::DovecotUidlFormat::parse(&self.store.uidl_dovecot_format)
        {
            return invalid(
                "store.uidl_dovecot_format",
                &format!("{why}; Dovecot's default is \"%08Xu%08Xv\""),
            );
        }
        if self.store.default_domain.is_empty()
            || self.store.default_domain.contains(['/', '\0'])
            || self.store.default_domain.starts_with('.')
        {
            return invalid("store.default_domain", "must be a plain domain name");
        }
        self.validate_external_passdb()?;
        if self.auth.kind == AuthKind::Pam {
            let service = &self.auth.pam.service;
            if service.is_empty()
                || service.len() > 64
                || !service
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
                || service.starts_with('.')
            {
                return invalid(
                    "auth.pam.service",
                    "must be a file name in /etc/pam.d (letters, digits, - _ .)",
                );
            }
            if !(1..=300).contains(&self.auth.pam.timeout_secs) {
                return invalid("auth.pam.timeout_secs", "must be between 1 and 300");
            }
            if self.store.kind == StoreKind::Postgres {
                return invalid(
                    "auth.kind",
                    "pam serves system accounts from the Maildir or mbox store",
                );
            }
        }
        if self.auth.max_failures == 0 {
            return invalid("auth.max_failures", "must be at least 1");
        }
        if self.auth.failure_delay_ms > 60_000 {
            return invalid(
                "auth.failure_delay_ms",
                "must be at most 60000 (one minute)",
            );
        }
        if self.limits.max_connections == 0 {
            return invalid("limits.max_connections", "must be at least 1");
        }
        if self.limits.authorization_timeout_secs == 0 || self.limits.autologout_secs == 0 {
            return invalid(
                "limits.autologout_secs",
                "timeouts must be at least 1 second",
            );
        }
        if self.limits.max_connections_per_address == 0 {
            return invalid("limits.max_connections_per_address", "must be at least 1");
        }
        if self.limits.max_unauthenticated == 0 {
            return invalid("limits.max_unauthenticated", "must be at least 1");
        }
        if self.auth.max_failures_per_address == 0 {
            return invalid("auth.max_failures_per_address", "must be at least 1");
        }
        if self.auth.max_failure_delay_ms < self.auth.failure_delay_ms {
            return invalid(
                "auth.max_failure_delay_ms",
                "must be at least auth.failure_delay_ms",
            );
        }
        // A failed login holds its connection (and its pre-login place)
        // for this long at most: no setting makes that wait endless.
        if self.auth.max_failure_delay_ms > 300_000 {
            return invalid(
                "auth.max_failure_delay_ms",
                "must be at most 300000 (five minutes)",
            );
        }
        if self.auth.cache_secs > 86_400 {
            return invalid(
                "auth.cache_secs",
                "must be at most 86400 (a day): a changed password must win within hours, not never",
            );
        }
        if let Some((key, message)) = self.auth.oauth.as_ref().and_then(|o| o.problem()) {
            return invalid(key, &message);
        }
        if let Some(name) = &self.auth.rehash_to {
            if let Err(error) = name.parse::<crate::auth::scheme::Scheme>() {
                return invalid("auth.rehash_to", &error.to_string());
            }
        }
        if self.limits.max_bad_commands == 0 {
            return invalid("limits.max_bad_commands", "must be at least 1");
        }
        let t = &self.transcript;
        if t.dir.is_none() && !(t.users.is_empty() && t.addresses.is_empty()) {
            return invalid(
                "transcript.dir",
                "is needed when transcript.users or transcript.addresses is set",
            );
        }
        if t.max_files == 0 {
            return invalid("transcript.max_files", "must be at least 1");
        }
        if self.server.group.is_some() && self.server.user.is_none() {
            return invalid("server.group", "needs server.user as well");
        }
        if self.server.user.as_deref() == Some("") {
            return invalid(
                "server.user",
                "must name the account the server runs as, e.g. \"mailbag\"",
            );
        }
        if self.server.group.as_deref() == Some("") {
            return invalid("server.group", "must name a group, or be left out");
        }
        if let Some(e) = &self.pop3.expire {
            if !(e == "NEVER" || (!e.is_empty() && e.bytes().all(|b| b.is_ascii_digit()))) {
                return invalid("pop3.expire", "must be \"NEVER\" or a number of days");
            }
        }
        if self.pop3.summary_large_octets == 0 {
            return invalid("pop3.summary_large_octets", "must be at least 1");
        }
        Ok(())
    }

    /// The failure delay as a duration.
    pub fn failure_delay(&self) -> Duration {
        Duration::from_millis(self.auth.failure_delay_ms)
    }
}

fn absolute(base: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
[pop3]
listen = ["127.0.0.1:1110"]
[store]
root = "mail"
[auth]
passwd_file = "passwd"
"#;

    #[test]
    fn store_clusters_are_named_distinct_and_exclusive_with_url() {
        let pg = r#"
[pop3]
listen = ["127.0.0.1:1110"]
[store]
kind = "postgres"
[[store.clusters]]
name = "a"
url = "host=a"
[[store.clusters]]
name = "b-2"
url = "host=b"
new_users = false
[auth]
"#;
        let c = Config::parse(pg, Path::new("/etc/mailbag")).unwrap();
        let names: Vec<(&str, bool)> = c
            .store
            .clusters
            .iter()
            .map(|c| (c.name.as_str(), c.new_users))
            .collect();
        assert_eq!(names, [("a", true), ("b-2", false)]);
        for (text, key) in [
            (
                pg.replace(
                    "kind = \"postgres\"",
                    "kind = \"postgres\"\nurl = \"host=x\"",
                ),
                "store.url",
            ),
            (pg.replace("\"b-2\"", "\"a\""), "store.clusters.name"),
            (pg.replace("\"b-2\"", "\"B\""), "store.clusters.name"),
            (pg.replace("\"b-2\"", "\"\""), "store.clusters.name"),
            (pg.replace("\"b-2\"", "\"b\\n\""), "store.clusters.name"),
            (pg.replace("\"host=b\"", "\"\""), "store.clusters.url"),
            (
                pg.replace("name = \"a\"", "name = \"a\"\nnew_users = false"),
                "store.clusters.new_users",
            ),
            (
                pg.replace(
                    "[[store.clusters]]\nname = \"a\"",
                    "directory_url = \"\"\n[[store.clusters]]\nname = \"a\"",
                ),
                "store.directory_url",
            ),
        ] {
            let e = Config::parse(&text, Path::new("/"))
                .unwrap_err()
                .to_string();
            assert!(e.contains(key), "{key}: {e}");
        }
        assert!(valid_cluster_name("eu-1_a"));
        assert!(!valid_cluster_name(&"a".repeat(33)));
    }

    #[test]
    fn postgres_store_needs_a_url_and_neither_root_nor_passwd_file() {
        let pg = r#"
[pop3]
listen = ["127.0.0.1:1110"]
[store]
kind = "postgres"
url = "host=db1,db2 user=mailbag dbname=mailbag target_session_attrs=read-write"
[auth]
"#;
        let c = Config::parse(pg, Path::new("/etc/mailbag")).unwrap();
        assert_eq!(c.store.kind, StoreKind::Postgres);
        assert_eq!((c.store.pool_size, c.store.lock_connections), (16, 2));
        for (text, key) in [
            (pg.replace("url = ", "# url = "), "store.url"),
            (
                pg.replace("[auth]", "pool_size = 0\n[auth]"),
                "store.pool_size",
            ),
            (
                pg.replace("[auth]", "lock_connections = 0\n[auth]"),
                "store.lock_connections",
            ),
            (
                pg.replace("kind = \"postgres\"", "kind = \"maildir\""),
                "store.root",
            ),
            (
                pg.replace("kind = \"postgres\"", "kind = \"maildir\"\nroot = \"m\""),
                "auth.passwd_file",
            ),
        ] {
            let e = Config::parse(&text, Path::new("/"))
                .unwrap_err()
                .to_string();
            assert!(e.contains(key), "{key}: {e}");
        }
    }

    #[test]
    fn pam_auth_needs_no_passwd_file_and_checks_its_service() {
        let pam = r#"
[pop3]
listen = ["127.0.0.1:1110"]
[store]
kind = "mbox"
[auth]
kind = "pam"
"#;
        let c = Config::parse(pam, Path::new("/etc/mailbag")).unwrap();
        assert_eq!(c.auth.kind, AuthKind::Pam);
        assert_eq!(c.auth.pam.service, "mailbag");
        assert_eq!(c.auth.pam.min_uid, 1000);
        let c = Config::parse(
            &pam.replace(
                "kind = \"pam\"",
                "kind = \"pam\"\n[auth.pam]\nservice = \"pop3\"\nmin_uid = 500",
            ),
            Path::new("/"),
        )
        .unwrap();
        assert_eq!(
            (c.auth.pam.service.as_str(), c.auth.pam.min_uid),
            ("pop3", 500)
        );
        for (text, key) in [
            (
                pam.replace(
                    "kind = \"pam\"",
                    "kind = \"pam\"\n[auth.pam]\nservice = \"../passwd\"",
                ),
                "auth.pam.service",
            ),
            (
                pam.replace(
                    "kind = \"pam\"",
                    "kind = \"pam\"\n[auth.pam]\nservice = \"\"",
                ),
                "auth.pam.service",
            ),
            (
                pam.replace(
                    "kind = \"pam\"",
                    "kind = \"pam\"\n[auth.pam]\ntimeout_secs = 0",
                ),
                "auth.pam.timeout_secs",
            ),
            (
                pam.replace(
                    "kind = \"pam\"",
                    "kind = \"pam\"\n[auth.pam]\nservise = \"x\"",
                ),
                "servise",
            ),
            (
                pam.replace("kind = \"pam\"", "kind = \"passwd_file\""),
                "auth.passwd_file",
            ),
            (
                pam.replace("kind = \"mbox\"", "kind = \"postgres\"\nurl = \"host=x\""),
                "auth.kind",
            ),
        ] {
            let e = Config::parse(&text, Path::new("/"))
                .unwrap_err()
                .to_string();
            assert!(e.contains(key), "{key}: {e}");
        }
    }

    #[test]
    fn mbox_store_has_debian_defaults_and_checks_its_template() {
        let mbox = r#"
[pop3]
listen = ["127.0.0.1:1110"]
[store]
kind = "mbox"
[auth]
passwd_file = "passwd"
"#;
        let c = Config::parse(mbox, Path::new("/etc/mailbag")).unwrap();
        assert_eq!(c.store.kind, StoreKind::Mbox);
        assert_eq!(c.store.mbox.path, "/var/mail/%u");
        assert!(c.store.mbox.dotlock && c.store.mbox.fcntl && !c.store.mbox.flock);
        assert_eq!(c.store.mbox.stale_lock_secs, 300);
        for (extra, key) in [
            ("[store.mbox]\npath = \"mail/%u\"", "store.mbox.path"),
            ("[store.mbox]\npath = \"/var/%u/mbox\"", "store.mbox.path"),
            ("[store.mbox]\npath = \"/var/mail/x\"", "store.mbox.path"),
            ("[store.mbox]\npath = \"/var/mail/%d%u\"", "store.mbox.path"),
            (
                "[store.mbox]\ndotlock = false\nfcntl = false",
                "store.mbox.dotlock",
            ),
        ] {
            let text = mbox.replace("[auth]", &format!("{extra}\n[auth]"));
            let e = Config::parse(&text, Path::new("/"))
                .unwrap_err()
                .to_string();
            assert!(e.contains(key), "{key}: {e}");
        }
        let no_passwd = mbox.replace("passwd_file = \"passwd\"", "");
        let e = Config::parse(&no_passwd, Path::new("/"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("auth.passwd_file"), "{e}");
    }

    #[test]
    fn minimal_config_gets_defaults_and_absolute_paths() {
        let c = Config::parse(MINIMAL, Path::new("/etc/mailbag")).unwrap();
        assert_eq!(c.store.root, Path::new("/etc/mailbag/mail"));
        assert_eq!(c.auth.passwd_file, Path::new("/etc/mailbag/passwd"));
        assert_eq!(c.store.path, "{root}/{domain}/{user}/Maildir");
        assert_eq!(c.limits.autologout_secs, 600);
        assert_eq!(c.auth.failure_delay_ms, 2000);
        assert!(!c.auth.allow_plaintext);
        assert_eq!(c.pop3.summary_large_octets, 10 * 1024 * 1024);
        assert!(c.tls.is_none());
        let trusted: Vec<String> = c
            .auth
            .trusted_networks
            .iter()
            .map(|n| n.to_string())
            .collect();
        assert_eq!(trusted, ["127.0.0.0/8", "::1/128"]);
    }

    #[test]
    fn tls_paths_are_absolute_and_listen_tls_needs_them() {
        let text = MINIMAL.replace("[pop3]", "[tls]\ncertificate = \"c.pem\"\nkey = \"k.pem\"\n[pop3]\nlisten_tls = [\"127.0.0.1:1995\"]");
        let c = Config::parse(&text, Path::new("/etc/mailbag")).unwrap();
        let tls = c.tls.unwrap();
        assert_eq!(tls.certificate, Path::new("/etc/mailbag/c.pem"));
        assert_eq!(tls.key, Path::new("/etc/mailbag/k.pem"));
        let text = MINIMAL.replace("[pop3]", "[pop3]\nlisten_tls = [\"127.0.0.1:1995\"]");
        let e = Config::parse(&text, Path::new("/"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("pop3.listen_tls"), "{e}");
        let text = MINIMAL.replace("[auth]", "[auth]\ntrusted_networks = [\"10.0.0.0/33\"]");
        let e = Config::parse(&text, Path::new("/"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("trusted_networks") && e.contains("10.0.0.0/33"),
            "{e}"
        );
    }

    #[test]
    fn lmtp_alone_is_a_server_and_quotas_default_to_unlimited() {
        let text = r#"
[lmtp]
socket = "run/lmtp.sock"
[store]
root = "mail"
[auth]
passwd_file = "passwd"
[quota]
max_octets = 1000
[quota.users."bob@example.org"]
max_messages = 5
"#;
        let c = Config::parse(text, Path::new("/etc/mailbag")).unwrap();
        assert!(c.pop3.listen.is_empty());
        assert_eq!(
            c.lmtp.socket.as_deref(),
            Some(Path::new("/etc/mailbag/run/lmtp.sock"))
        );
        assert_eq!(c.lmtp.max_message_octets, 10_240_000);
        assert_eq!(c.lmtp.max_recipients, 100);
        assert_eq!(
            c.quota.for_user("alice"),
            Quota {
                max_octets: 1000,
                max_messages: 0
            }
        );
        assert_eq!(
            c.quota.for_user("bob@example.org"),
            Quota {
                max_octets: 0,
                max_messages: 5
            }
        );
        let plain = Config::parse(MINIMAL, Path::new("/")).unwrap();
        assert_eq!(plain.quota.for_user("x"), Quota::default());
        assert!(plain.lmtp.listen.is_empty() && plain.lmtp.socket.is_none());
        // Neither POP3 nor LMTP: nothing to serve.
        let e = Config::parse(
            &text.replace("socket = \"run/lmtp.sock\"", ""),
            Path::new("/"),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("pop3.listen") && e.contains("lmtp.socket"),
            "{e}"
        );
    }

    #[test]
    fn unknown_key_is_named() {
        let text = MINIMAL.replace("[auth]", "[auth]\npasswd_fiel = 1");
        let e = Config::parse(&text, Path::new("/"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("passwd_fiel"), "{e}");
    }

    #[test]
    fn bad_values_name_their_key() {
        let cases = [
            (
                format!("{MINIMAL}\n[transcript]\nusers = [\"alice\"]\n"),
                "transcript.dir",
            ),
            (MINIMAL.replace("[\"127.0.0.1:1110\"]", "[]"), "pop3.listen"),
            (
                MINIMAL.replace("root = \"mail\"", "root = \"mail\"\npath = \"{root}/all\""),
                "store.path",
            ),
            (
                MINIMAL.replace(
                    "root = \"mail\"",
                    "root = \"mail\"\npath = \"{root}/{usr}\"",
                ),
                "store.path",
            ),
            (
                MINIMAL.replace("[auth]", "[auth]\nmax_failures = 0"),
                "auth.max_failures",
            ),
            (
                MINIMAL.replace("[auth]", "[auth]\nmax_failure_delay_ms = 86400000"),
                "auth.max_failure_delay_ms",
            ),
            (
                MINIMAL.replace("[auth]", "[auth]\nfailure_delay_ms = 3600000"),
                "auth.failure_delay_ms",
            ),
            (
                MINIMAL.replace("[pop3]", "[pop3]\nexpire = \"soon\""),
                "pop3.expire",
            ),
            (
                MINIMAL.replace("[pop3]", "[pop3]\nsummary_large_octets = 0"),
                "pop3.summary_large_octets",
            ),
        ];
        let cases = cases.into_iter().chain([
            (
                format!("{MINIMAL}[lmtp]\nmax_recipients = 0\n"),
                "lmtp.max_recipients",
            ),
            (
                format!("{MINIMAL}[lmtp]\nmax_message_octets = 0\n"),
                "lmtp.max_message_octets",
            ),
            (format!("{MINIMAL}[quota]\nmax_octet = 1\n"), "max_octet"),
            (format!("{MINIMAL}[server]\nuser = \"\"\n"), "server.user"),
            (
                format!("{MINIMAL}[server]\nuser = \"mailbag\"\ngroup = \"\"\n"),
                "server.group",
            ),
        ]);
        for (text, key) in cases {
            let e = Config::parse(&text, Path::new("/"))
                .unwrap_err()
                .to_string();
            assert!(e.contains(key), "{key}: {e}");
        }
        let e = Config::parse(
            &MINIMAL.replace("127.0.0.1:1110", "nonsense"),
            Path::new("/"),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("listen"), "{e}");
    }
}
