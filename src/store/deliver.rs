//! Local delivery, shared by the LMTP driver and `mailbag deliver`: which
//! user an address names, the trace headers a delivery agent adds, the
//! quota check, and the durable write through [`Store::deliver`].
//!
//! Also the `mailbag deliver` command itself ([`run`]): one message from
//! standard input, with sysexits exit codes as Postfix `mailbox_command`,
//! procmail and fetchmail's `mda` expect. Nothing here writes to a
//! terminal except one line on standard error when delivery fails, and
//! nothing logs message content.

use std::io::Read;

use mailbag_proto::dot::canonical_size;

use crate::auth::{AuthError, PassDb};
use crate::config::{Config, Quota};
use crate::store::{Store, StoreError, Usage};

/// Why a message was not delivered to one user, in the shapes the
/// replies and exit codes distinguish.
#[derive(Debug, thiserror::Error)]
pub enum DeliverError {
    /// The maildrop is over its quota, or the message is over the size
    /// limit (`552`, exit 73).
    #[error("mailbox full")]
    OverQuota,
    /// The store failed; retrying may help or not, as the
    /// [`StoreError`] says (`451`/`554`, exit 75/73).
    #[error("store failure")]
    Store(#[from] StoreError),
}

/// The user names an address may mean, most specific first: the address
/// itself, the same with the domain in lower case, and, when its domain
/// is the store's default domain (or it has none), the other spelling of
/// that user, because `alice` and `alice@<default_domain>` share one
/// maildrop.
pub fn candidates(address: &str, default_domain: &str) -> Vec<String> {
    let mut out = vec![address.to_string()];
    match address.rsplit_once('@') {
        Some((local, domain)) => {
            let lower = format!("{local}@{}", domain.to_ascii_lowercase());
            if lower != address {
                out.push(lower);
            }
            if domain.eq_ignore_ascii_case(default_domain) && !local.is_empty() {
                out.push(local.to_string());
            }
        }
        None => out.push(format!("{address}@{default_domain}")),
    }
    out
}

/// The canonical user an address names, or `None` for an unknown user.
pub async fn resolve<P: PassDb>(
    passdb: &P,
    default_domain: &str,
    address: &str,
) -> Result<Option<String>, AuthError> {
    for name in candidates(address, default_domain) {
        // A name the store could not hold is no user: refused at RCPT,
        // not after DATA.
        if !crate::auth::name::is_valid(&name) {
            continue;
        }
        if let Some(user) = passdb.user_exists(&name).await? {
            return Ok(Some(user));
        }
    }
    Ok(None)
}

/// `message` with `Return-Path:` (when the sender is known; empty is the
/// null sender `<>`) and `Delivered-To:` prepended, in the line ending the
/// message itself uses, so that a stored file never mixes the two.
/// The values must hold no control characters; callers check.
pub fn with_headers(return_path: Option<&str>, delivered_to: &str, message: &[u8]) -> Vec<u8> {
    let eol: &[u8] = match memchr::memchr(b'\n', message) {
        Some(i) if i == 0 || message[i - 1] != b'\r' => b"\n",
        _ => b"\r\n",
    };
    let mut out = Vec::with_capacity(message.len() + 128);
    if let Some(sender) = return_path {
        out.extend_from_slice(b"Return-Path: <");
        out.extend_from_slice(sender.as_bytes());
        out.push(b'>');
        out.extend_from_slice(eol);
    }
    out.extend_from_slice(b"Delivered-To: ");
    out.extend_from_slice(delivered_to.as_bytes());
    out.extend_from_slice(eol);
    out.extend_from_slice(message);
    out
}

/// Whether a header value is safe to write: no control characters, which
/// could end the header early or smuggle in another.
pub fn header_safe(value: &str) -> bool {
    !value.chars().any(char::is_control)
}

/// Whether a maildrop holding `usage` is already at its quota, so that
/// RCPT can refuse before the client sends the message.
pub fn full(quota: Quota, usage: Usage) -> bool {
    (quota.max_messages > 0 && usage.messages >= quota.max_messages)
        || (quota.max_octets > 0 && usage.octets >= quota.max_octets)
}

/// Whether one more message of `octets` fits.
pub fn fits(quota: Quota, usage: Usage, octets: u64) -> bool {
    (quota.max_messages == 0 || usage.messages < quota.max_messages)
        && (quota.max_octets == 0 || usage.octets.saturating_add(octets) <= quota.max_octets)
}

/// Whether `user` (canonical) is at the quota now. A store that cannot
/// say is not a reason to refuse: delivery checks again.
pub async fn at_quota<S: Store>(store: &S, quota: Quota, user: &str) -> bool {
    if quota == Quota::default() {
        return false;
    }
    match store.usage(user).await {
        Ok(usage) => full(quota, usage),
        Err(e) => {
            tracing::warn!(error = %e, user, "cannot measure the maildrop for its quota");
            false
        }
    }
}

/// Checks `user`'s quota and stores `message` durably. Concurrent
/// deliveries may each pass the check and together overshoot the quota by
/// a message: a quota that never loses mail, not an exact one.
pub async fn deliver<S: Store>(
    store: &S,
    quota: Quota,
    user: &str,
    message: Vec<u8>,
) -> Result<String, DeliverError> {
    if quota != Quota::default() {
        let usage = store.usage(user).await?;
        if !fits(quota, usage, canonical_size(&message)) {
            return Err(DeliverError::OverQuota);
        }
    }
    Ok(store.deliver(user, message).await?)
}

/// sysexits(3) codes that `mailbag deliver` exits with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Delivered.
    Delivered = 0,
    /// EX_USAGE: bad arguments.
    Usage = 64,
    /// EX_NOUSER: no such user; the MTA bounces.
    NoUser = 67,
    /// EX_CANTCREAT: over quota or over the size limit; the MTA bounces.
    CantCreate = 73,
    /// EX_TEMPFAIL: try again later; the MTA keeps the message queued.
    TempFail = 75,
    /// EX_CONFIG: the configuration cannot be used.
    Config = 78,
}

impl Exit {
    /// The process exit status.
    pub fn code(self) -> u8 {
        self as u8
    }
}

/// A delivery that did not happen: the exit code and what to tell the
/// MTA on standard error.
#[derive(Debug)]
pub struct Refused {
    /// The exit code.
    pub exit: Exit,
    /// One line for standard error.
    pub reason: String,
}

fn refused(exit: Exit, reason: impl Into<String>) -> Refused {
    Refused {
        exit,
        reason: reason.into(),
    }
}

/// `mailbag deliver --user <user> [--from <sender>]`: reads one message
/// from `input` and delivers it. Returns the base name of the new message.
///
/// A leading mbox `From ` line (procmail, fetchmail and Postfix may
/// prepend one) is not part of the message: it is dropped, and its sender
/// stands in for a missing `--from`.
pub async fn run<S: Store, P: PassDb>(
    config: &Config,
    store: &S,
    passdb: &P,
    user: &str,
    from: Option<&str>,
    input: impl Read,
) -> Result<String, Refused> {
    if user.is_empty() || !header_safe(user) {
        return Err(refused(Exit::Usage, "--user must be a user name"));
    }
    if from.is_some_and(|f| !header_safe(f)) {
        return Err(refused(
            Exit::Usage,
            "--from must not hold control characters",
        ));
    }
    let limit = config.lmtp.max_message_octets;
    let mut message = Vec::new();
    input
        .take(limit.saturating_add(1))
        .read_to_end(&mut message)
        .map_err(|e| refused(Exit::TempFail, format!("cannot read the message: {e}")))?;
    if message.len() as u64 > limit {
        return Err(refused(
            Exit::CantCreate,
            format!("message larger than lmtp.max_message_octets ({limit})"),
        ));
    }
    let (envelope_from, message) = strip_from_line(message);
    let sender = from.map(str::to_string).or(envelope_from);

    let canonical = match resolve(passdb, &config.store.default_domain, user).await {
        Ok(Some(canonical)) => canonical,
        Ok(None) => return Err(refused(Exit::NoUser, format!("no such user: {user}"))),
        Err(e) => return Err(refused(Exit::TempFail, e.to_string())),
    };
    let message = with_headers(sender.as_deref(), user, &message);
    let quota = config.quota.for_user(&canonical);
    deliver(store, quota, &canonical, message)
        .await
        .map_err(|e| match e {
            DeliverError::OverQuota => refused(Exit::CantCreate, format!("mailbox full: {user}")),
            DeliverError::Store(StoreError::Permanent(m)) => refused(Exit::Config, m),
            DeliverError::Store(e) => refused(Exit::TempFail, error_chain(&e)),
        })
}

/// Drops a leading mbox `From sender date` line; returns the sender when
/// it is usable as a header value.
fn strip_from_line(mut message: Vec<u8>) -> (Option<String>, Vec<u8>) {
    if !message.starts_with(b"From ") {
        return (None, message);
    }
    let end = memchr::memchr(b'\n', &message).map_or(message.len(), |i| i + 1);
    let sender = std::str::from_utf8(&message[5..end])
        .ok()
        .and_then(|rest| rest.split_whitespace().next())
        .filter(|s| header_safe(s))
        // mbox writes the null sender as MAILER-DAEMON.
        .map(|s| if s == "MAILER-DAEMON" { "" } else { s }.to_string());
    message.drain(..end);
    (sender, message)
}

/// An error with its sources, for one log or stderr line.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidates_cover_both_spellings_of_a_default_domain_user() {
        let c = |a: &str| candidates(a, "localhost");
        assert_eq!(c("alice"), ["alice", "alice@localhost"]);
        assert_eq!(c("alice@localhost"), ["alice@localhost", "alice"]);
        assert_eq!(
            c("alice@LocalHost"),
            ["alice@LocalHost", "alice@localhost", "alice"]
        );
        assert_eq!(c("bob@example.org"), ["bob@example.org"]);
        assert_eq!(c("@localhost"), ["@localhost"]);
    }

    #[test]
    fn headers_follow_the_message_line_ending() {
        assert_eq!(
            with_headers(Some("a@b"), "u@d", b"S: x\r\n\r\nbody\r\n"),
            b"Return-Path: <a@b>\r\nDelivered-To: u@d\r\nS: x\r\n\r\nbody\r\n"
        );
        assert_eq!(
            with_headers(Some(""), "u", b"S: x\n\nbody\n"),
            b"Return-Path: <>\nDelivered-To: u\nS: x\n\nbody\n"
        );
        assert_eq!(with_headers(None, "u", b""), b"Delivered-To: u\r\n");
        assert_eq!(with_headers(None, "u", b"\nx"), b"Delivered-To: u\n\nx");
        assert!(header_safe("a@b c"));
        assert!(!header_safe("a\r\nBcc: x"));
    }

    #[test]
    fn quota_arithmetic_treats_zero_as_unlimited() {
        let usage = Usage {
            messages: 2,
            octets: 100,
        };
        let q = |max_octets, max_messages| Quota {
            max_octets,
            max_messages,
        };
        assert!(fits(q(0, 0), usage, u64::MAX));
        assert!(fits(q(150, 0), usage, 50));
        assert!(!fits(q(150, 0), usage, 51));
        assert!(fits(q(0, 3), usage, 1));
        assert!(!fits(q(0, 2), usage, 1));
        assert!(!full(q(0, 0), usage));
        assert!(!full(q(101, 3), usage));
        assert!(full(q(100, 0), usage));
        assert!(full(q(0, 2), usage));
    }

    #[test]
    fn mbox_from_line_is_dropped_and_names_the_sender() {
        let (s, m) = strip_from_line(b"From a@b Thu Nov 26 10:00:00 2026\nS: x\n\nb\n".to_vec());
        assert_eq!((s.as_deref(), &m[..]), (Some("a@b"), &b"S: x\n\nb\n"[..]));
        let (s, _) = strip_from_line(b"From MAILER-DAEMON Thu\r\n".to_vec());
        assert_eq!(s.as_deref(), Some(""));
        let (s, m) = strip_from_line(b"From: a@b\n\nx\n".to_vec());
        assert_eq!((s, &m[..]), (None, &b"From: a@b\n\nx\n"[..]));
    }
}
