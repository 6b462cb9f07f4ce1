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

use crate::auth::name::Matching;
use crate::auth::{AuthError, PassDb, User};
use crate::config::{Config, Quota};
use crate::store::{Mailbox, Store, StoreError, Usage};

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

/// The canonical user an address names, or `None` for an unknown user:
/// the one name rule ([`Matching::resolve`]) that POP3 and SASL logins
/// use too. Letter case is the passdb's to fold.
pub async fn resolve<P: PassDb>(
    passdb: &P,
    default_domain: &str,
    address: &str,
) -> Result<Option<String>, AuthError> {
    Ok(resolve_user(passdb, default_domain, address)
        .await?
        .map(|u| u.name))
}

/// As [`resolve`], with the maildrop and quota the user's entry gives
/// (from the same lookups).
pub async fn resolve_user<P: PassDb>(
    passdb: &P,
    default_domain: &str,
    address: &str,
) -> Result<Option<User>, AuthError> {
    Matching {
        case_insensitive: false,
        default_domain: default_domain.to_string(),
    }
    .resolve_user(passdb, address)
    .await
}

/// How much of a message is searched for a `Delivered-To:` header: the
/// header block ends at the first empty line, and one that goes on longer
/// than this is not read further.
const HEADER_SCAN_OCTETS: usize = 64 * 1024;

/// `message` with `Return-Path:` (when the sender is known; empty is the
/// null sender `<>`) and `Delivered-To:` prepended, in the line ending the
/// message itself uses, so that a stored file never mixes the two.
/// `Delivered-To:` is left out when the header block already names the
/// same recipient (Postfix's `pipe` with its `D` flag adds one before
/// `mailbag deliver` runs). The values must hold no control characters;
/// callers check.
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
    if !delivered_already(message, delivered_to) {
        out.extend_from_slice(b"Delivered-To: ");
        out.extend_from_slice(delivered_to.as_bytes());
        out.extend_from_slice(eol);
    }
    out.extend_from_slice(message);
    out
}

/// Whether the header block of `message` (up to its first empty line, at
/// most [`HEADER_SCAN_OCTETS`]) has a `Delivered-To:` naming `recipient`,
/// compared without regard to case (and to angle brackets around it).
fn delivered_already(message: &[u8], recipient: &str) -> bool {
    let head = &message[..message.len().min(HEADER_SCAN_OCTETS)];
    for line in head.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            return false;
        }
        const NAME: &[u8] = b"delivered-to:";
        if line.len() < NAME.len() || !line[..NAME.len()].eq_ignore_ascii_case(NAME) {
            continue;
        }
        let value = line[NAME.len()..].trim_ascii();
        let value = value
            .strip_prefix(b"<")
            .and_then(|v| v.strip_suffix(b">"))
            .unwrap_or(value);
        if value.eq_ignore_ascii_case(recipient.as_bytes()) {
            return true;
        }
    }
    false
}

/// `message` with each CRLF stored as a bare LF, the form Maildir tools
/// expect; what RETR sends (and the `W=` size) is unchanged, as the
/// canonical form turns each LF back into CRLF. A CR before a CRLF is
/// data (a bare CR), and such a CRLF is kept whole: stored as LF, the two
/// CRs would read back as one CR and a line ending, an octet short.
pub fn lf_line_endings(message: Vec<u8>) -> Vec<u8> {
    if memchr::memmem::find(&message, b"\r\n").is_none() {
        return message;
    }
    let mut out = Vec::with_capacity(message.len());
    for (i, &b) in message.iter().enumerate() {
        let drop =
            b == b'\r' && message.get(i + 1) == Some(&b'\n') && (i == 0 || message[i - 1] != b'\r');
        if !drop {
            out.push(b);
        }
    }
    out
}

/// The address a `Delivered-To:` names: the recipient as the MTA gave
/// it, or with the default domain when it has none (a bare `u1` next to
/// Postfix's `u1@example.test` reads as another recipient).
pub fn full_address(recipient: &str, default_domain: &str) -> String {
    if recipient.contains('@') {
        recipient.to_string()
    } else {
        format!("{recipient}@{default_domain}")
    }
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
pub async fn at_quota<S: Store>(store: &S, quota: Quota, user: Mailbox<'_>) -> bool {
    if quota == Quota::default() {
        return false;
    }
    match store.usage(user).await {
        Ok(usage) => full(quota, usage),
        Err(e) => {
            tracing::warn!(error = %e, user = user.name, "cannot measure the maildrop for its quota");
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
    user: Mailbox<'_>,
    message: Vec<u8>,
) -> Result<String, DeliverError> {
    if quota != Quota::default() {
        let usage = store.usage(user).await?;
        if !fits(quota, usage, canonical_size(&message)) {
            return Err(DeliverError::OverQuota);
        }
    }
    // One line-ending form in storage, whichever way the message came
    // (LMTP sends CRLF, a pipe from an MTA LF): LF in mail files, CRLF
    // where the store keeps the canonical form (which a message from
    // LMTP already has, and is then stored without a copy).
    let message = if S::KEEPS_CRLF {
        message
    } else {
        lf_line_endings(message)
    };
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

    let canonical = match resolve_user(passdb, &config.store.default_domain, user).await {
        Ok(Some(canonical)) => canonical,
        Ok(None) => return Err(refused(Exit::NoUser, format!("no such user: {user}"))),
        Err(e) => return Err(refused(Exit::TempFail, e.to_string())),
    };
    let recipient = full_address(user, &config.store.default_domain);
    let message = with_headers(sender.as_deref(), &recipient, &message);
    let quota = canonical.quota(config.quota.for_user(&canonical.name));
    deliver(store, quota, canonical.mailbox(), message)
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
        assert_eq!(
            with_headers(
                Some("a@b"),
                "U1@Example.Test",
                b"Delivered-To: u1@example.test\n\nx\n"
            ),
            b"Return-Path: <a@b>\nDelivered-To: u1@example.test\n\nx\n"
        );
        assert_eq!(
            with_headers(None, "u1@d", b"delivered-to:  <U1@D> \r\n\r\n"),
            b"delivered-to:  <U1@D> \r\n\r\n"
        );
        // Another recipient's, or one in the body, is no reason to leave
        // it out.
        assert_eq!(
            with_headers(None, "u1@d", b"Delivered-To: u2@d\n\nDelivered-To: u1@d\n"),
            b"Delivered-To: u1@d\nDelivered-To: u2@d\n\nDelivered-To: u1@d\n"
        );
        let mut long = b"X: y\n".repeat(HEADER_SCAN_OCTETS / 5 + 1);
        long.extend_from_slice(b"Delivered-To: u1@d\n\n");
        assert!(with_headers(None, "u1@d", &long).starts_with(b"Delivered-To: u1@d\n"));
        assert_eq!(with_headers(None, "u", b"\nx"), b"Delivered-To: u\n\nx");
        assert!(header_safe("a@b c"));
        assert!(!header_safe("a\r\nBcc: x"));
    }

    #[test]
    fn lf_storage_reads_back_as_the_same_crlf_octets() {
        assert_eq!(lf_line_endings(b"a\r\nb\r\n".to_vec()), b"a\nb\n");
        assert_eq!(lf_line_endings(b"a\nb\r\nc".to_vec()), b"a\nb\nc");
        assert_eq!(lf_line_endings(b"a\rb\r\r\n".to_vec()), b"a\rb\r\r\n");
        // Every message of up to 8 octets from `a`, CR and LF: stored LF,
        // it canonicalizes to exactly the octets the original does.
        let alphabet = [b'a', b'\r', b'\n'];
        for len in 0..=8u32 {
            for mut n in 0..3usize.pow(len) {
                let mut message = Vec::new();
                for _ in 0..len {
                    message.push(alphabet[n % 3]);
                    n /= 3;
                }
                let stored = lf_line_endings(message.clone());
                assert_eq!(
                    mailbag_proto::dot::canonicalize(&stored),
                    mailbag_proto::dot::canonicalize(&message),
                    "{message:?}"
                );
                assert_eq!(canonical_size(&stored), canonical_size(&message));
                assert_eq!(lf_line_endings(stored.clone()), stored, "not idempotent");
            }
        }
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
