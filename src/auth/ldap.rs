//! The LDAP password database (`[auth.ldap]`).
//!
//! Two modes, as directory administrators expect:
//!
//! - `bind`: the directory checks the password. The user's DN comes from
//!   a template (`user_dn`) or from a search with the service account
//!   (`user_filter`); the password is then presented in a simple bind on
//!   a connection kept for user binds only. Only USER/PASS, AUTH PLAIN
//!   and AUTH LOGIN can work (mailbag never sees a stored secret), so
//!   SCRAM-SHA-256, CRAM-MD5 and APOP are not offered.
//! - `lookup`: the service account reads the password attribute
//!   (`userPassword`, `{SCHEME}data` as OpenLDAP stores it) and mailbag
//!   checks it with the passwd-file's code. SCRAM-SHA-256 is offered only
//!   when `offer_scram` says every user's value can answer it.
//!
//! The user name goes into templates escaped for where it lands: RFC 4515
//! in filters, RFC 4514 in DNs, never spliced raw. A user who is not in
//! the directory costs the same steps as one who is: in bind mode a bind
//! with a DN that names no entry (refused as a wrong password is), in
//! lookup mode the decoy hash check. Failures are padded as every
//! passdb's are ([`timing`](super::timing)), and a directory that cannot
//! be reached, or answers late, is a temporary error (`[SYS/TEMP]`),
//! never a wrong password.
//!
//! `maildrop_attribute` and `quota_attribute`, when set, are read with
//! the service account in the lookup that finds the user for the
//! maildrop (at login and for delivery): the maildrop as a path relative
//! to `store.root`, the quota in octets (`k`/`M`/`G`/`T` multipliers
//! taken, 0 unlimited). A user who can write those attributes of their
//! own entry can point them at another maildrop: directory ACLs must
//! keep them to administrators.
//!
//! Connections are pooled (at most `pool_size` of each kind); a broken
//! one is dropped and the operation retried once on a new connection, so
//! logins work again as soon as a restarted directory answers.

use std::borrow::Cow;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ldap3::asn1::StructureTag;
use ldap3::{dn_escape, ldap_escape, Ldap, LdapConnAsync, LdapConnSettings, LdapError, Scope};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::timeout_at;

use super::cache::VerifiedCache;
use super::credential::valid_user_name;
use super::external::{name_parts, temporary, Checker};
use super::name::fold;
use super::secret::ServerSecret;
use super::{AuthError, Credential, PassDb, ScramKeys, User, UserAttributes};
use crate::config::{LdapConfig, LdapMode};

/// Entries read for one name at most: a second match means the filter
/// does not name one user.
const MAX_ENTRIES: usize = 2;
/// Values of one attribute looked at.
const MAX_VALUES: usize = 16;

/// Result codes of a bind that mean "not this password" rather than "the
/// directory is unwell": invalidCredentials, inappropriateAuthentication,
/// unwillingToPerform (a locked or unusable account), constraintViolation
/// (password policy), insufficientAccessRights.
const REFUSED: [u32; 5] = [49, 48, 53, 19, 50];
/// noSuchObject: a templated DN that names no entry.
const NO_SUCH_OBJECT: u32 = 32;
/// sizeLimitExceeded: the filter matched more entries than asked for.
const SIZE_LIMIT_EXCEEDED: u32 = 4;

/// Why a template is refused.
pub fn check_template(template: &str) -> Result<(), String> {
    let mut chars = template.chars();
    while let Some(c) = chars.next() {
        if c == '%' {
            match chars.next() {
                Some('u' | 'n' | 'd' | '%') => {}
                other => {
                    return Err(format!(
                        "unknown placeholder %{} in {template:?}; use %u, %n, %d or %%",
                        other.map(String::from).unwrap_or_default()
                    ))
                }
            }
        }
    }
    Ok(())
}

/// `template` with the user name's parts put in, each passed through
/// `escape` (RFC 4515 for filters, RFC 4514 for DNs).
pub fn expand(template: &str, user: &str, escape: fn(&str) -> Cow<'_, str>) -> String {
    let (local, domain) = name_parts(user);
    let mut out = String::with_capacity(template.len() + user.len() * 3);
    let mut chars = template.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('u') => out.push_str(&escape(user)),
            Some('n') => out.push_str(&escape(local)),
            Some('d') => out.push_str(&escape(domain)),
            Some('%') => out.push('%'),
            // Refused by `check_template` when the config is read.
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

/// RFC 4515 §3: `*`, `(`, `)`, `\` and NUL as `\XX` (and, from ldap3,
/// every non-ASCII octet).
pub fn filter_escape(value: &str) -> Cow<'_, str> {
    ldap_escape(value)
}

/// RFC 4514 §2.4: special characters of an attribute value in a DN.
pub fn dn_value_escape(value: &str) -> Cow<'_, str> {
    dn_escape(value)
}

/// One entry of a search result, read without trusting its shape.
struct Entry {
    dn: String,
    attrs: Vec<(String, Vec<Vec<u8>>)>,
}

impl Entry {
    /// Reads a SearchResultEntry; `None` for one that is not well formed.
    fn parse(tag: StructureTag) -> Option<Entry> {
        let mut parts = tag.match_id(4)?.expect_constructed()?.into_iter();
        let dn = String::from_utf8(parts.next()?.expect_primitive()?).ok()?;
        let mut attrs = Vec::new();
        for attr in parts.next()?.expect_constructed()? {
            let mut attr = attr.expect_constructed()?.into_iter();
            let name = String::from_utf8(attr.next()?.expect_primitive()?).ok()?;
            let values = attr
                .next()?
                .expect_constructed()?
                .into_iter()
                .take(MAX_VALUES)
                .map(StructureTag::expect_primitive)
                .collect::<Option<Vec<_>>>()?;
            attrs.push((name, values));
        }
        Some(Entry { dn, attrs })
    }

    /// The first value of `attribute` (names compare case-insensitively,
    /// as LDAP's do) that is UTF-8.
    fn first(&self, attribute: &str) -> Option<String> {
        self.attrs
            .iter()
            .filter(|(name, _)| name.eq_ignore_ascii_case(attribute))
            .flat_map(|(_, values)| values)
            .find_map(|v| String::from_utf8(v.clone()).ok())
    }
}

/// Why one directory operation failed.
enum OpError {
    /// The connection or the directory failed: retry on a new connection.
    Connection(String),
    /// The directory answered with an error result.
    Result(u32, String),
}

impl From<LdapError> for OpError {
    fn from(e: LdapError) -> Self {
        match e {
            LdapError::LdapResult { result } => OpError::Result(result.rc, result.text),
            other => OpError::Connection(other.to_string()),
        }
    }
}

impl OpError {
    fn temporary(self) -> AuthError {
        match self {
            OpError::Connection(e) => AuthError::Temporary(format!("LDAP: {e}")),
            OpError::Result(rc, text) => {
                AuthError::Temporary(format!("LDAP: result code {rc}: {text}"))
            }
        }
    }
}

/// Connections of one kind: at most `size` open, idle ones reused.
struct Pool {
    idle: Mutex<Vec<Ldap>>,
    permits: Arc<Semaphore>,
    /// The service account bound on every new connection.
    bind: Option<(String, String)>,
}

/// A connection taken from a pool, given back unless it failed.
struct Pooled<'a> {
    ldap: Option<Ldap>,
    /// Whether it came from the idle list (it may have died since).
    reused: bool,
    pool: &'a Pool,
    _permit: OwnedSemaphorePermit,
}

impl Pooled<'_> {
    fn ldap(&mut self) -> &mut Ldap {
        self.ldap.as_mut().expect("present until dropped")
    }

    /// Drops the connection instead of giving it back.
    fn discard(mut self) {
        self.ldap = None;
    }
}

impl Drop for Pooled<'_> {
    fn drop(&mut self) {
        if let Some(ldap) = self.ldap.take() {
            self.pool
                .idle
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(ldap);
        }
    }
}

/// Users in an LDAP directory.
#[derive(Clone)]
pub struct LdapPassDb {
    inner: Arc<Inner>,
}

struct Inner {
    config: LdapConfig,
    settings: LdapConnSettings,
    /// Bound as the service account (or anonymous): searches and reads.
    service: Pool,
    /// Only ever used for users' binds.
    users: Pool,
    checker: Checker,
    timeout: Duration,
}

impl std::fmt::Debug for LdapPassDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LdapPassDb")
            .field("url", &self.inner.config.url)
            .field("mode", &self.inner.config.mode)
            .finish_non_exhaustive()
    }
}

/// Why the LDAP passdb could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum LdapSetupError {
    /// The CA file could not be used.
    #[error("auth.ldap.ca_file {path}: {message}")]
    Ca {
        /// The file.
        path: std::path::PathBuf,
        /// What was wrong.
        message: String,
    },
}

/// The TLS client settings: the CA file's certificates, or the system's.
fn tls_config(ca_file: Option<&std::path::Path>) -> Result<rustls::ClientConfig, LdapSetupError> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::CertificateDer;
    const SYSTEM_BUNDLES: [&str; 2] = [
        "/etc/ssl/certs/ca-certificates.crt",
        "/etc/pki/tls/certs/ca-bundle.crt",
    ];
    let path = match ca_file {
        Some(path) => path.to_path_buf(),
        None => SYSTEM_BUNDLES
            .iter()
            .map(std::path::PathBuf::from)
            .find(|p| p.exists())
            .unwrap_or_else(|| SYSTEM_BUNDLES[0].into()),
    };
    let ca = |message: String| LdapSetupError::Ca {
        path: path.clone(),
        message,
    };
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(&path).map_err(|e| ca(e.to_string()))? {
        roots
            .add(cert.map_err(|e| ca(e.to_string()))?)
            .map_err(|e| ca(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(ca("no certificate in the file".into()));
    }
    Ok(rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| ca(e.to_string()))?
    .with_root_certificates(roots)
    .with_no_client_auth())
}

impl LdapPassDb {
    /// A passdb for `config`; connects on first use.
    pub fn new(config: &LdapConfig) -> Result<LdapPassDb, LdapSetupError> {
        let timeout = Duration::from_secs(config.timeout_secs);
        let mut settings = LdapConnSettings::new()
            .set_conn_timeout(timeout)
            .set_starttls(config.starttls);
        if config.url.starts_with("ldaps://") || config.starttls || config.ca_file.is_some() {
            settings = settings.set_config(Arc::new(tls_config(config.ca_file.as_deref())?));
        }
        let pool = |bind: Option<(String, String)>| Pool {
            idle: Mutex::new(Vec::new()),
            permits: Arc::new(Semaphore::new(config.pool_size.max(1))),
            bind,
        };
        let service = config.bind_dn.clone().zip(config.bind_password.clone());
        Ok(LdapPassDb {
            inner: Arc::new(Inner {
                config: config.clone(),
                settings,
                service: pool(service),
                users: pool(None),
                checker: Checker::default(),
                timeout,
            }),
        })
    }

    /// With the verified-credential cache (lookup mode).
    pub fn with_cache(mut self, cache: Option<VerifiedCache>) -> LdapPassDb {
        self.inner_mut().checker.cache = cache.map(Arc::new);
        self
    }

    /// With the server secret that made-up SCRAM values come from.
    pub fn with_secret(mut self, secret: ServerSecret) -> LdapPassDb {
        self.inner_mut().checker.secret = secret;
        self
    }

    /// With names matched whatever their letter case or not.
    pub fn with_case_insensitive_names(mut self, on: bool) -> LdapPassDb {
        self.inner_mut().checker.case_insensitive = on;
        self
    }

    fn inner_mut(&mut self) -> &mut Inner {
        Arc::get_mut(&mut self.inner).expect("configured before it is shared")
    }

    /// A connection from `pool`, opened (and bound as the service
    /// account) if none is idle, by `deadline`.
    async fn take<'a>(&self, pool: &'a Pool, deadline: Instant) -> Result<Pooled<'a>, OpError> {
        let deadline = tokio::time::Instant::from_std(deadline);
        let permit = timeout_at(deadline, Arc::clone(&pool.permits).acquire_owned())
            .await
            .map_err(|_| OpError::Connection("no connection free in time".into()))?
            .map_err(|e| OpError::Connection(e.to_string()))?;
        while let Some(mut ldap) = pool.idle.lock().unwrap_or_else(|p| p.into_inner()).pop() {
            if !ldap.is_closed() {
                return Ok(Pooled {
                    ldap: Some(ldap),
                    reused: true,
                    pool,
                    _permit: permit,
                });
            }
        }
        let opened = timeout_at(deadline, async {
            let (conn, mut ldap) =
                LdapConnAsync::with_settings(self.inner.settings.clone(), &self.inner.config.url)
                    .await?;
            tokio::spawn(async move {
                if let Err(error) = conn.drive().await {
                    tracing::debug!(%error, "LDAP connection ended");
                }
            });
            if let Some((dn, password)) = &pool.bind {
                ldap.with_timeout(self.inner.timeout)
                    .simple_bind(dn, password)
                    .await?
                    .success()?;
            }
            Ok::<_, LdapError>(ldap)
        })
        .await
        .map_err(|_| OpError::Connection("connecting timed out".into()))?;
        let ldap = opened.map_err(|e| match OpError::from(e) {
            // The service account's own bind failing is the
            // configuration's fault, not the user's.
            OpError::Result(rc, text) => {
                OpError::Connection(format!("service bind: result code {rc}: {text}"))
            }
            other => other,
        })?;
        Ok(Pooled {
            ldap: Some(ldap),
            reused: false,
            pool,
            _permit: permit,
        })
    }

    /// Runs `op` on a connection from `pool`; a failure of a reused
    /// connection (the directory restarted since it was opened) is
    /// retried once on a new one.
    async fn with_conn<T, F>(&self, pool: &Pool, mut op: F) -> Result<T, OpError>
    where
        F: for<'c> FnMut(
            &'c mut Ldap,
        ) -> std::pin::Pin<
            Box<dyn std::future::Future<Output = Result<T, OpError>> + Send + 'c>,
        >,
    {
        let deadline = Instant::now() + self.inner.timeout;
        loop {
            let mut conn = self.take(pool, deadline).await?;
            let result = timeout_at(tokio::time::Instant::from_std(deadline), op(conn.ldap()))
                .await
                .unwrap_or_else(|_| Err(OpError::Connection("timed out".into())));
            match result {
                Err(OpError::Connection(e)) => {
                    let retry = conn.reused;
                    conn.discard();
                    if !retry {
                        return Err(OpError::Connection(e));
                    }
                }
                other => return other,
            }
        }
    }

    /// The entry the filter finds for `user` (with `attrs`), `None` when
    /// there is none.
    async fn search(&self, user: &str, attrs: Vec<String>) -> Result<Option<Entry>, AuthError> {
        let config = &self.inner.config;
        let Some(filter) = &config.user_filter else {
            return Ok(None);
        };
        let filter = expand(filter, user, filter_escape);
        let base = config.base.clone();
        let attrs = if attrs.is_empty() {
            // RFC 4511 §4.5.1.8: no attributes at all.
            vec!["1.1".to_string()]
        } else {
            attrs
        };
        let timeout = self.inner.timeout;
        let found = self
            .with_conn(&self.inner.service, |ldap| {
                let (filter, base, attrs) = (filter.clone(), base.clone(), attrs.clone());
                Box::pin(async move {
                    let result = ldap
                        .with_timeout(timeout)
                        .with_search_options(
                            ldap3::SearchOptions::new().sizelimit(MAX_ENTRIES as i32),
                        )
                        .search(&base, Scope::Subtree, &filter, attrs)
                        .await?;
                    Ok(result)
                })
            })
            .await
            .map_err(OpError::temporary)?;
        let ldap3::SearchResult(entries, result) = found;
        match result.rc {
            0 => {}
            NO_SUCH_OBJECT => return Ok(None),
            SIZE_LIMIT_EXCEEDED => return Err(ambiguous(user)),
            rc => return Err(OpError::Result(rc, result.text).temporary()),
        }
        let mut entries = entries
            .into_iter()
            .filter(|e| !e.is_ref() && !e.is_intermediate())
            .map(|e| Entry::parse(e.0).ok_or_else(|| temporary("LDAP: malformed entry")));
        let first = entries.next().transpose()?;
        if entries.next().is_some() {
            return Err(ambiguous(user));
        }
        Ok(first)
    }

    /// Whether the templated DN names an entry.
    async fn dn_exists(&self, dn: &str) -> Result<bool, AuthError> {
        Ok(self.read_entry(dn, Vec::new()).await?.is_some())
    }

    /// The entry the templated DN names (with `attrs`), read as the
    /// service account; `None` when there is none.
    async fn read_entry(&self, dn: &str, attrs: Vec<String>) -> Result<Option<Entry>, AuthError> {
        let timeout = self.inner.timeout;
        let dn = dn.to_string();
        let attrs = if attrs.is_empty() {
            vec!["1.1".to_string()]
        } else {
            attrs
        };
        let found = self
            .with_conn(&self.inner.service, |ldap| {
                let (dn, attrs) = (dn.clone(), attrs.clone());
                Box::pin(async move {
                    Ok(ldap
                        .with_timeout(timeout)
                        .search(&dn, Scope::Base, "(objectClass=*)", attrs)
                        .await?)
                })
            })
            .await
            .map_err(OpError::temporary)?;
        match found.1.rc {
            0 => {}
            NO_SUCH_OBJECT => return Ok(None),
            rc => return Err(OpError::Result(rc, found.1.text).temporary()),
        }
        found
            .0
            .into_iter()
            .find(|e| !e.is_ref() && !e.is_intermediate())
            .map(|e| Entry::parse(e.0).ok_or_else(|| temporary("LDAP: malformed entry")))
            .transpose()
    }

    /// The attributes to read for a user: the name's, and those of the
    /// maildrop and quota.
    fn user_attribute_names(&self) -> Vec<String> {
        let config = &self.inner.config;
        config
            .name_attribute
            .iter()
            .chain(&config.maildrop_attribute)
            .chain(&config.quota_attribute)
            .cloned()
            .collect()
    }

    /// What `entry` says about the maildrop and its quota. A quota that is
    /// not a size is a temporary error, never "unlimited".
    fn user_attributes(&self, entry: &Entry) -> Result<UserAttributes, AuthError> {
        let config = &self.inner.config;
        let maildrop = config
            .maildrop_attribute
            .as_deref()
            .and_then(|a| entry.first(a))
            .filter(|m| !m.is_empty());
        let quota_octets = match config
            .quota_attribute
            .as_deref()
            .and_then(|a| entry.first(a))
        {
            None => None,
            Some(value) => Some(parse_quota(&value).ok_or_else(|| {
                AuthError::Temporary(format!(
                    "LDAP: {} of {:?} is not a size in octets: {value:?}",
                    config.quota_attribute.as_deref().unwrap_or_default(),
                    entry.dn
                ))
            })?),
        };
        Ok(UserAttributes {
            maildrop,
            quota_octets,
            quota_messages: None,
        })
    }

    /// The canonical name of the user `entry` is, given as `user`.
    fn canonical(&self, user: &str, entry: Option<&Entry>) -> Option<String> {
        let name = match (&self.inner.config.name_attribute, entry) {
            (Some(attribute), Some(entry)) => entry.first(attribute)?,
            _ => fold(self.name_read(user), self.inner.checker.case_insensitive).into_owned(),
        };
        valid_user_name(&name).then_some(name)
    }

    /// The part of `user` the directory is asked about: a template that
    /// reads only `%n` finds `bob` and `bob@<domain>` as the one entry,
    /// so both are the user `bob` (name matching tries both spellings,
    /// and must not take them for two users).
    fn name_read<'a>(&self, user: &'a str) -> &'a str {
        let config = &self.inner.config;
        let template = config
            .user_dn
            .as_deref()
            .or(config.user_filter.as_deref())
            .unwrap_or("%u");
        let reads_whole = template
            .replace("%%", "")
            .split('%')
            .skip(1)
            .any(|rest| rest.starts_with('u') || rest.starts_with('d'));
        if reads_whole {
            user
        } else {
            name_parts(user).0
        }
    }

    /// Lookup mode: the canonical name and the stored secret.
    async fn lookup(&self, user: &str) -> Result<Option<(String, String)>, AuthError> {
        if !valid_user_name(user) {
            return Ok(None);
        }
        let config = &self.inner.config;
        let mut attrs = vec![config.password_attribute.clone()];
        attrs.extend(config.name_attribute.clone());
        let Some(entry) = self.search(user, attrs).await? else {
            return Ok(None);
        };
        let Some(name) = self.canonical(user, Some(&entry)) else {
            return Ok(None);
        };
        Ok(entry
            .first(&config.password_attribute)
            .map(|stored| (name, openldap_scheme(stored))))
    }

    /// Bind mode: the DN to bind as (the template's, or the search's),
    /// and the canonical name; `None` for a name that is no user.
    async fn bind_dn(&self, user: &str) -> Result<Option<(String, String)>, AuthError> {
        if !valid_user_name(user) {
            return Ok(None);
        }
        let config = &self.inner.config;
        if let Some(template) = &config.user_dn {
            let dn = expand(template, user, dn_value_escape);
            return Ok(self.canonical(user, None).map(|name| (dn, name)));
        }
        let attrs = config.name_attribute.iter().cloned().collect();
        let Some(entry) = self.search(user, attrs).await? else {
            return Ok(None);
        };
        Ok(self
            .canonical(user, Some(&entry))
            .map(|name| (entry.dn.clone(), name)))
    }

    /// A DN under the search base that names no entry: binding as it
    /// costs the directory what a wrong password does.
    fn decoy_dn(&self) -> String {
        let base = &self.inner.config.base;
        if base.is_empty() {
            "cn=mailbag decoy".into()
        } else {
            format!("cn=mailbag decoy,{base}")
        }
    }

    /// Bind mode: presents `password` as `dn`.
    async fn user_bind(&self, dn: &str, password: &str) -> Result<bool, AuthError> {
        let timeout = self.inner.timeout;
        let (dn, password) = (dn.to_string(), password.to_string());
        let bound = self
            .with_conn(&self.inner.users, |ldap| {
                let (dn, password) = (dn.clone(), password.clone());
                Box::pin(async move {
                    Ok(ldap
                        .with_timeout(timeout)
                        .simple_bind(&dn, &password)
                        .await?)
                })
            })
            .await
            .map_err(OpError::temporary)?;
        match bound.rc {
            0 => Ok(true),
            rc if REFUSED.contains(&rc) => Ok(false),
            rc => Err(OpError::Result(rc, bound.text).temporary()),
        }
    }

    async fn verify_by_bind(
        &self,
        user: &str,
        credential: &Credential,
    ) -> Result<String, AuthError> {
        let began = Instant::now();
        let target = self.bind_dn(user).await?;
        let password = match credential {
            // RFC 4513 §5.1.2: a bind with an empty password is an
            // unauthenticated bind, which succeeds without checking
            // anything; it is never presented.
            Credential::Password(p) if !p.expose().is_empty() => Some(p.expose()),
            _ => None,
        };
        let verified = match (target, password) {
            (Some((dn, name)), Some(password)) => {
                self.user_bind(&dn, password).await?.then_some(name)
            }
            (None, Some(password)) => {
                // The same steps for a name that is no user.
                let _ = self.user_bind(&self.decoy_dn(), password).await?;
                None
            }
            (_, None) => None,
        };
        match verified {
            Some(name) => {
                self.inner.checker.times.record(began.elapsed());
                Ok(name)
            }
            None => {
                self.inner.checker.pad_failure(began).await;
                Err(AuthError::Invalid)
            }
        }
    }
}

/// OpenLDAP's argon2 module writes `{ARGON2}` before a PHC string
/// (`$argon2id$...`), which the `$id$` inside names: checked as
/// `{CRYPT}` values are.
fn openldap_scheme(stored: String) -> String {
    match stored.get(..8) {
        Some(prefix) if prefix.eq_ignore_ascii_case("{ARGON2}") => {
            format!("{{CRYPT}}{}", &stored[8..])
        }
        _ => stored,
    }
}

fn ambiguous(user: &str) -> AuthError {
    AuthError::Temporary(format!(
        "LDAP: auth.ldap.user_filter matches more than one entry for {user:?}"
    ))
}

/// A quota as directories hold it: octets, optionally with a binary
/// multiplier (`k`, `M`, `G`, `T`, as Dovecot's quota rules take them);
/// 0 is unlimited. `None` for anything else, or a value that overflows.
pub fn parse_quota(value: &str) -> Option<u64> {
    let value = value.trim();
    let (digits, shift) = match value.char_indices().last()? {
        (i, 'b' | 'B') => (&value[..i], 0),
        (i, 'k' | 'K') => (&value[..i], 10),
        (i, 'm' | 'M') => (&value[..i], 20),
        (i, 'g' | 'G') => (&value[..i], 30),
        (i, 't' | 'T') => (&value[..i], 40),
        _ => (value, 0),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse::<u64>().ok()?.checked_mul(1u64 << shift)
}

impl PassDb for LdapPassDb {
    fn has_user_attributes(&self) -> bool {
        let config = &self.inner.config;
        config.maildrop_attribute.is_some() || config.quota_attribute.is_some()
    }

    async fn find_user(&self, user: &str) -> Result<Option<User>, AuthError> {
        if !self.has_user_attributes() {
            return Ok(self.user_exists(user).await?.map(User::named));
        }
        if !valid_user_name(user) {
            return Ok(None);
        }
        let config = &self.inner.config;
        let attrs = self.user_attribute_names();
        // The same lookup as `user_exists`, with the attributes asked for.
        let (entry, name) = match &config.user_dn {
            Some(template) => {
                let dn = expand(template, user, dn_value_escape);
                let entry = self.read_entry(&dn, attrs).await?;
                let name = entry.as_ref().and_then(|_| self.canonical(user, None));
                (entry, name)
            }
            None => {
                let entry = self.search(user, attrs).await?;
                let name = entry.as_ref().and_then(|e| self.canonical(user, Some(e)));
                (entry, name)
            }
        };
        let (Some(entry), Some(name)) = (entry, name) else {
            return Ok(None);
        };
        Ok(Some(User {
            attributes: self.user_attributes(&entry)?,
            name,
        }))
    }

    async fn verify(&self, user: &str, credential: &Credential) -> Result<String, AuthError> {
        match self.inner.config.mode {
            LdapMode::Bind => self.verify_by_bind(user, credential).await,
            LdapMode::Lookup => {
                let found = self.lookup(user).await?;
                self.inner.checker.verify(found, credential).await
            }
        }
    }

    async fn user_exists(&self, user: &str) -> Result<Option<String>, AuthError> {
        if !valid_user_name(user) {
            return Ok(None);
        }
        let config = &self.inner.config;
        if let Some(template) = &config.user_dn {
            let dn = expand(template, user, dn_value_escape);
            return Ok(if self.dn_exists(&dn).await? {
                self.canonical(user, None)
            } else {
                None
            });
        }
        let attrs = config.name_attribute.iter().cloned().collect();
        let entry = self.search(user, attrs).await?;
        Ok(entry.and_then(|entry| self.canonical(user, Some(&entry))))
    }

    async fn scram_keys(&self, user: &str) -> Result<(String, ScramKeys), AuthError> {
        let found = match self.inner.config.mode {
            LdapMode::Lookup => self.lookup(user).await?,
            LdapMode::Bind => None,
        };
        self.inner.checker.scram_keys(user, found).await
    }

    fn cram_md5_possible(&self) -> bool {
        false
    }

    fn apop_possible(&self) -> bool {
        false
    }

    fn scram_possible(&self) -> bool {
        self.inner.config.mode == LdapMode::Lookup && self.inner.config.offer_scram
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_escaped_for_filters_and_dns() {
        let filter = "(&(objectClass=inetOrgPerson)(mail=%u))";
        assert_eq!(
            expand(filter, "a*)(uid=*", filter_escape),
            r"(&(objectClass=inetOrgPerson)(mail=a\2a\29\28uid=\2a))"
        );
        assert_eq!(
            expand("(uid=%n)(dc=%d)", r"x\y@ex(a)mple.org", filter_escape),
            r"(uid=x\5cy)(dc=ex\28a\29mple.org)"
        );
        assert_eq!(
            expand(
                "uid=%n,ou=people,dc=example,dc=org",
                "a,ou=admins+x",
                dn_value_escape
            ),
            r"uid=a\2cou\3dadmins\2bx,ou=people,dc=example,dc=org"
        );
        assert_eq!(expand("100%% %n", "bob@x", filter_escape), "100% bob");
    }

    #[test]
    fn openldap_argon2_values_are_checked_by_their_phc_string() {
        use crate::auth::scheme::{self, Scheme};
        let ours = scheme::hash(Scheme::Argon2id, b"argon-pass").unwrap();
        let phc = ours.split_once('}').unwrap().1;
        let openldap = format!("{{ARGON2}}{phc}");
        assert!(!scheme::verify(&openldap, b"argon-pass"));
        let checked = openldap_scheme(openldap);
        assert!(scheme::verify(&checked, b"argon-pass"));
        assert!(!scheme::verify(&checked, b"wrong"));
        assert_eq!(openldap_scheme("{SSHA}x".into()), "{SSHA}x");
    }

    #[test]
    fn quotas_are_octets_with_an_optional_binary_multiplier() {
        assert_eq!(parse_quota("1048576"), Some(1 << 20));
        assert_eq!(parse_quota(" 10M "), Some(10 << 20));
        assert_eq!(parse_quota("2k"), Some(2048));
        assert_eq!(parse_quota("1G"), Some(1 << 30));
        assert_eq!(parse_quota("5b"), Some(5));
        assert_eq!(parse_quota("0"), Some(0));
        for bad in [
            "",
            "M",
            "-1",
            "1.5G",
            "10 M",
            "1e9",
            "99999999999999999999",
            "16777216T",
        ] {
            assert_eq!(parse_quota(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn templates_name_only_known_placeholders() {
        assert!(check_template("(mail=%u)").is_ok());
        assert!(check_template("uid=%n,dc=%d,%%").is_ok());
        assert!(check_template("(mail=%s)").is_err());
        assert!(check_template("(mail=%").is_err());
    }
}
