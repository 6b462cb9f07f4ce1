//! `mailbag mailbox`: the administrator helping a user whose mail program
//! is stuck on one bad message. `inspect` prints the SUMMARY table with
//! UIDLs (and what is in quarantine), `show` prints one message's header,
//! `quarantine` moves a message out of the POP3 view, `release` puts it
//! back with its UIDL unchanged.
//!
//! Every subcommand, `inspect` and `show` included, takes the maildrop
//! lock that POP3 sessions take, and refuses while a session holds it: the
//! numbers it prints are then the ones the user's client sees, and nothing
//! moves under a session. `inspect` and `show` change nothing but the size
//! cache, which any session refreshes too.
//!
//! Started as root, the command has become `[server] user` before it gets
//! here (see `privileges::for_command`): the lock, the caches and the
//! quarantine folder it creates belong to the server, never to root.
//!
//! Message numbers go through the POP3 core's own rule
//! ([`parse_message_number`], [`Index::of`]), so that a number means here
//! what it means to the user's client. With a PostgreSQL store, `inspect`
//! and `show` work through the [`Store`] and [`Maildrop`] traits (see
//! [`run_with`]); `quarantine` and `release` move files within a Maildir
//! and are refused there, with nothing done.

use std::io::{self, Read, Write};

use clap::Subcommand;
use mailbag_proto::pop3::{parse_message_number, Index};
use tokio::io::AsyncReadExt;

use crate::config::{Config, StoreKind};
use crate::store::maildir::{AdminMaildrop, MaildirStore};
use crate::store::mbox::{MboxAdmin, MboxStore, Released};
use crate::store::summary::{self, PARSE_PREFIX_OCTETS};
use crate::store::{Maildrop, Store, StoreError};

/// `mailbag mailbox …`
#[derive(Debug, Subcommand)]
pub enum MailboxCommand {
    /// Print one line per message (number, UIDL, octets, date, From,
    /// Subject, problems), then the quarantined messages.
    Inspect {
        /// The user name.
        user: String,
    },
    /// Print the header of message N, numbered as POP3 numbers it now.
    Show {
        /// The user name.
        user: String,
        /// The message number.
        number: String,
    },
    /// Move a message out of the POP3 view: into the Quarantine folder
    /// inside the user's Maildir, or out of the user's mbox spool into
    /// `store.mbox.quarantine_dir`.
    Quarantine {
        /// The user name.
        user: String,
        /// A message number (all digits) or a UIDL.
        message: String,
    },
    /// Put a quarantined message back, with its UIDL unchanged.
    Release {
        /// The user name.
        user: String,
        /// The UIDL that `inspect` shows for it.
        uidl: String,
    },
}

/// Why a `mailbox` command failed.
#[derive(Debug, thiserror::Error)]
pub enum MailboxError {
    /// A POP3 session holds the maildrop lock.
    #[error("the maildrop of {0} is in use by a POP3 session; nothing was done. Try again when the session ends")]
    Locked(String),
    /// No message has that number or UIDL.
    #[error("{0}")]
    NoSuchMessage(String),
    /// The store failed.
    #[error("{0}")]
    Store(#[from] StoreError),
    /// Writing the output failed.
    #[error("cannot write the output: {0}")]
    Output(#[from] io::Error),
    /// The subcommand moves files within a Maildir, and the store is not
    /// one.
    #[error("mailbox {command} moves message files within a Maildir, and store.kind is \"{kind}\"; nothing was done")]
    MaildirOnly {
        /// The subcommand.
        command: &'static str,
        /// The configured store kind.
        kind: &'static str,
    },
}

impl MailboxCommand {
    /// The subcommand's name, as typed.
    fn name(&self) -> &'static str {
        match self {
            MailboxCommand::Inspect { .. } => "inspect",
            MailboxCommand::Show { .. } => "show",
            MailboxCommand::Quarantine { .. } => "quarantine",
            MailboxCommand::Release { .. } => "release",
        }
    }
}

/// A store error of opening `user`'s maildrop, with the lock held
/// elsewhere said as such.
fn open_failed(user: &str, e: StoreError) -> MailboxError {
    match e {
        StoreError::Locked => MailboxError::Locked(user.to_string()),
        other => MailboxError::Store(other),
    }
}

/// The message `text` names in a maildrop of `count` messages, by the
/// POP3 core's rule (digits only, 1 and up, within the maildrop).
fn index_of_number(text: &str, count: usize) -> Result<Index, MailboxError> {
    let number = parse_message_number(text);
    number.and_then(|n| Index::of(n, count)).ok_or_else(|| {
        let shown = number.map_or_else(|| "with that number".to_string(), |n| n.to_string());
        MailboxError::NoSuchMessage(format!(
            "no message {shown}: the maildrop has {count} message{}",
            if count == 1 { "" } else { "s" }
        ))
    })
}

/// The message `quarantine` names: a message number (digits only), else
/// a UIDL that `by_uidl` looks up.
fn quarantine_index(
    user: &str,
    message: &str,
    count: usize,
    by_uidl: impl FnOnce(&str) -> Option<usize>,
) -> Result<usize, MailboxError> {
    if !message.is_empty() && message.bytes().all(|b| b.is_ascii_digit()) {
        return Ok(index_of_number(message, count)?.get());
    }
    by_uidl(message).ok_or_else(|| {
        MailboxError::NoSuchMessage(format!("no message of {user} has the UIDL {message}"))
    })
}

/// What `quarantine` prints once message `index` is out of the maildrop.
fn quarantined(out: &mut impl Write, user: &str, index: usize, uid: &str) -> io::Result<()> {
    writeln!(
        out,
        "message {} (UIDL {uid}) of {user} is in quarantine; put it back with: mailbag mailbox release {user} {uid}",
        index + 1
    )
}

/// Runs one `mailbox` command on a Maildir store, printing to `out`. With
/// another kind of store configured, it touches no path: see
/// [`run_with`].
pub fn run(
    config: &Config,
    command: MailboxCommand,
    out: &mut impl Write,
) -> Result<(), MailboxError> {
    if config.store.kind != StoreKind::Maildir {
        return Err(MailboxError::MaildirOnly {
            command: command.name(),
            kind: kind_name(config.store.kind),
        });
    }
    let store = MaildirStore::new(
        config.store.root.clone(),
        config.store.path.clone(),
        config.store.default_domain.clone(),
    );
    let open = |user: &str| {
        crate::store::open_waiting_blocking(|| store.open_admin(user))
            .map_err(|e| open_failed(user, e))
    };
    let large = config.pop3.summary_large_octets;
    match command {
        MailboxCommand::Inspect { user } => {
            let mut m = open(&user)?;
            inspect(&mut m, &user, large, out)
        }
        MailboxCommand::Show { user, number } => {
            let mut m = open(&user)?;
            let index = index_of_number(&number, m.messages().len())?.get();
            let mut prefix = Vec::new();
            m.open(index)?
                .take(PARSE_PREFIX_OCTETS as u64)
                .read_to_end(&mut prefix)?;
            out.write_all(header_block(&prefix).as_bytes())?;
            Ok(())
        }
        MailboxCommand::Quarantine { user, message } => {
            let mut m = open(&user)?;
            let index = quarantine_index(&user, &message, m.messages().len(), |u| m.index_of(u))?;
            let uid = m.quarantine(index)?;
            quarantined(out, &user, index, &uid)?;
            Ok(())
        }
        MailboxCommand::Release { user, uidl } => {
            let mut m = open(&user)?;
            m.release(&uidl)?;
            writeln!(out, "released {uidl} into the maildrop of {user}")?;
            Ok(())
        }
    }
}

fn kind_name(kind: StoreKind) -> &'static str {
    match kind {
        StoreKind::Maildir => "maildir",
        StoreKind::Postgres => "postgres",
        StoreKind::Mbox => "mbox",
    }
}

/// Runs one `mailbox` command on any store through the [`Store`] and
/// [`Maildrop`] traits: `inspect` and `show` as on a Maildir (under the
/// lock POP3 sessions take, released unchanged), while `quarantine` and
/// `release`, which move files within a Maildir, are refused with nothing
/// done. The `mailbag` binary uses it for a PostgreSQL store.
pub async fn run_with<S: Store>(
    store: &S,
    config: &Config,
    command: MailboxCommand,
    out: &mut impl Write,
) -> Result<(), MailboxError> {
    // `show`'s message number; none for `inspect`.
    let (user, number) = match &command {
        MailboxCommand::Inspect { user } => (user, None),
        MailboxCommand::Show { user, number } => (user, Some(number)),
        MailboxCommand::Quarantine { .. } | MailboxCommand::Release { .. } => {
            return Err(MailboxError::MaildirOnly {
                command: command.name(),
                kind: kind_name(config.store.kind),
            })
        }
    };
    let mut m = crate::store::open_waiting(store, user.into())
        .await
        .map_err(|e| open_failed(user, e))?;
    let done = async {
        let Some(number) = number else {
            let large = config.pop3.summary_large_octets;
            return inspect_maildrop(&mut m, user, None, large, out)
                .await
                .map(|_| ());
        };
        let index = index_of_number(number, m.messages().len())?;
        let mut prefix = Vec::new();
        m.read(index.get())
            .await?
            .take(PARSE_PREFIX_OCTETS as u64)
            .read_to_end(&mut prefix)
            .await?;
        out.write_all(header_block(&prefix).as_bytes())?;
        Ok(())
    }
    .await;
    // Released unchanged, and waited for: dropped, the unlock of a
    // PostgreSQL maildrop would be left to the server noticing that this
    // process has gone, and a session or command right after would find
    // the maildrop still locked.
    let released = m.commit(&[], &[]).await;
    done?;
    released.map_err(MailboxError::from)
}

/// Runs one `mailbox` command on an mbox store: `inspect` and `show`
/// under the session lock, as on a Maildir, with the quarantined messages
/// listed after the spool's; `quarantine` and `release` move a message
/// between the spool and `store.mbox.quarantine_dir` (see
/// `store::mbox::quarantine`), refused while a POP3 session holds the
/// spool.
pub async fn run_mbox(
    store: &MboxStore,
    config: &Config,
    command: MailboxCommand,
    out: &mut impl Write,
) -> Result<(), MailboxError> {
    let open = |user: &str| {
        crate::store::open_waiting_blocking(|| store.open_admin(user))
            .map_err(|e| open_failed(user, e))
    };
    let large = config.pop3.summary_large_octets;
    match command {
        MailboxCommand::Inspect { user } => {
            let mut m = open(&user)?;
            inspect_mbox(&mut m, &user, large, out).await
        }
        MailboxCommand::Show { user, number } => {
            let mut m = open(&user)?;
            let index = index_of_number(&number, m.messages().len())?.get();
            let mut prefix = Vec::new();
            m.maildrop()
                .read(index)
                .await?
                .take(PARSE_PREFIX_OCTETS as u64)
                .read_to_end(&mut prefix)
                .await?;
            out.write_all(header_block(&prefix).as_bytes())?;
            Ok(())
        }
        MailboxCommand::Quarantine { user, message } => {
            let m = open(&user)?;
            let index = quarantine_index(&user, &message, m.messages().len(), |u| m.index_of(u))?;
            let uid = m.quarantine(index)?;
            quarantined(out, &user, index, &uid)?;
            Ok(())
        }
        MailboxCommand::Release { user, uidl } => {
            let m = open(&user)?;
            match m.release(&uidl)? {
                Released::Appended(now) if now == uidl => {
                    writeln!(out, "released {uidl} into the maildrop of {user}")?
                }
                Released::Appended(now) => writeln!(
                    out,
                    "released {uidl} into the maildrop of {user}; its UIDL there is now {now}, \
                     as another message has the same From line and headers"
                )?,
                Released::WasInSpool => writeln!(
                    out,
                    "{uidl} was still in the maildrop of {user} (a quarantine or release that \
                     stopped half-way): removed its quarantine copy"
                )?,
            }
            Ok(())
        }
    }
}

/// `inspect` of an mbox spool, then its quarantine.
async fn inspect_mbox(
    m: &mut MboxAdmin,
    user: &str,
    large: u64,
    out: &mut impl Write,
) -> Result<(), MailboxError> {
    let quarantined = m.quarantined()?;
    let width = quarantined.iter().map(|q| q.uid.len()).max().unwrap_or(0);
    let spool = m.spool().to_path_buf();
    let mut budget =
        inspect_maildrop(m.maildrop(), user, Some((&spool, width)), large, out).await?;
    let width = m
        .messages()
        .iter()
        .map(|i| i.uid.len())
        .max()
        .unwrap_or(0)
        .max(width);
    if quarantined.is_empty() {
        return Ok(());
    }
    writeln!(
        out,
        "quarantined: {} (put one back with: mailbag mailbox release {user} UIDL)",
        quarantined.len()
    )?;
    for q in quarantined {
        let uid = Some((q.uid.as_str(), width));
        let summarized = m.open_quarantined(&q).and_then(|reader| {
            Ok(summary::summarize_read_within(
                reader,
                budget.min(summary::SCAN_OCTETS),
            )?)
        });
        let line = match summarized {
            Ok((s, scanned)) => {
                budget = budget.saturating_sub(scanned);
                summary::line_labelled("Q", q.size, uid, &s, large)
            }
            Err(_) => summary::unreadable_line(0, q.size, uid, "cannot be read"),
        };
        writeln!(out, "{line}")?;
        if q.in_spool {
            writeln!(
                out,
                "    {} is in the spool too (a quarantine or release stopped half-way): \
                 `mailbag mailbox quarantine {user} {}` finishes the quarantine, \
                 `mailbag mailbox release {user} {}` keeps it in the spool",
                q.uid, q.uid, q.uid
            )?;
        }
    }
    Ok(())
}

/// `inspect` through the [`Maildrop`] trait: the same table as on a
/// Maildir, without the Maildir's path and quarantine.
/// `location` is shown after the totals; `width` is at least that of
/// the widest UIDL; what the byte checks may still read is returned.
async fn inspect_maildrop<M: Maildrop>(
    m: &mut M,
    user: &str,
    shown: Option<(&std::path::Path, usize)>,
    large: u64,
    out: &mut impl Write,
) -> Result<u64, MailboxError> {
    let count = m.messages().len();
    let octets = m
        .messages()
        .iter()
        .fold(0u64, |sum, i| sum.saturating_add(i.size));
    writeln!(
        out,
        "{user}: {count} message{} ({octets} octets){}",
        if count == 1 { "" } else { "s" },
        shown.map_or_else(String::new, |(p, _)| format!(" in {}", p.display()))
    )?;
    let width = m
        .messages()
        .iter()
        .map(|i| i.uid.len())
        .chain(shown.map(|(_, w)| w))
        .max()
        .unwrap_or(0);
    // What the byte checks may still read, over all messages (see
    // `summary::SUMMARY_SCAN_OCTETS`).
    let mut budget = summary::SUMMARY_SCAN_OCTETS;
    for index in 0..count {
        let info = m.messages()[index].clone();
        let uid = Some((info.uid.as_str(), width));
        let summarized = match m.read(index).await {
            Ok(reader) => summary::summarize_async(reader, budget.min(summary::SCAN_OCTETS))
                .await
                .ok(),
            Err(_) => None,
        };
        let line = match summarized {
            Some((s, scanned)) => {
                budget = budget.saturating_sub(scanned);
                summary::line(index + 1, info.size, uid, &s, large)
            }
            None => summary::unreadable_line(index + 1, info.size, uid, "cannot be read"),
        };
        writeln!(out, "{line}")?;
    }
    Ok(budget)
}

fn inspect(
    m: &mut AdminMaildrop,
    user: &str,
    large: u64,
    out: &mut impl Write,
) -> Result<(), MailboxError> {
    let count = m.messages().len();
    let octets: u64 = m.messages().iter().map(|i| i.size).sum();
    writeln!(
        out,
        "{user}: {count} message{} ({octets} octets) in {}",
        if count == 1 { "" } else { "s" },
        m.maildir().display()
    )?;
    let quarantined = m.quarantined()?;
    let width = m
        .messages()
        .iter()
        .map(|i| i.uid.len())
        .chain(quarantined.iter().map(|q| q.uid.len()))
        .max()
        .unwrap_or(0);
    // What the byte checks may still read, over all messages (see
    // `summary::SUMMARY_SCAN_OCTETS`).
    let mut budget = summary::SUMMARY_SCAN_OCTETS;
    let mut summarize = |file: std::fs::File| {
        let (s, scanned) = summary::summarize_read_within(file, budget.min(summary::SCAN_OCTETS))?;
        budget = budget.saturating_sub(scanned);
        Ok::<_, io::Error>(s)
    };
    for index in 0..count {
        let info = m.messages()[index].clone();
        let uid = Some((info.uid.as_str(), width));
        let line = match m.open(index).map(&mut summarize) {
            Ok(Ok(s)) => summary::line(index + 1, info.size, uid, &s, large),
            Ok(Err(_)) | Err(_) => {
                summary::unreadable_line(index + 1, info.size, uid, "cannot be read")
            }
        };
        writeln!(out, "{line}")?;
    }
    if !quarantined.is_empty() {
        writeln!(
            out,
            "quarantined: {} (put one back with: mailbag mailbox release {user} UIDL)",
            quarantined.len()
        )?;
        for q in quarantined {
            let uid = Some((q.uid.as_str(), width));
            // Opened relative to the quarantine folder's descriptor, not
            // by its path: never through a symlink or into a FIFO that
            // the mailbox owner put in its place since the listing.
            let line = match m.open_quarantined(&q).map(&mut summarize) {
                Ok(Ok(s)) => summary::line_labelled("Q", q.size, uid, &s, large),
                _ => summary::unreadable_line(0, q.size, uid, "cannot be read"),
            };
            writeln!(out, "{line}")?;
        }
    }
    Ok(())
}

/// The header of a message as text safe to print on a terminal: up to the
/// blank line that ends it (or all of `prefix` when none does), CRLF as
/// LF, other control characters as `?`, invalid UTF-8 replaced.
pub fn header_block(prefix: &[u8]) -> String {
    let mut end = prefix.len();
    let mut line_start = 0;
    for (i, &b) in prefix.iter().enumerate() {
        if b == b'\n' {
            let line = &prefix[line_start..i];
            if line.is_empty() || line == b"\r" {
                end = line_start;
                break;
            }
            line_start = i + 1;
        }
    }
    let text = String::from_utf8_lossy(&prefix[..end]);
    let mut out = String::with_capacity(text.len() + 1);
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\r' if chars.peek() == Some(&'\n') => {}
            '\n' | '\t' => out.push(c),
            c if c.is_control() => out.push('?'),
            c => out.push(c),
        }
    }
    if !out.is_empty() && !out.ends_with('\n') {
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// While `inspect` runs, the mailbox owner keeps swapping a
    /// quarantined message for a symlink to another user's message: the
    /// other message is never opened (its Subject never shows).
    #[test]
    fn inspect_never_follows_a_symlink_swapped_into_the_quarantine() {
        use crate::store::maildir::{deliver, QUARANTINE_FOLDER};
        use std::sync::atomic::{AtomicBool, Ordering};
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("mail");
        let store = MaildirStore::new(root.clone(), "{root}/{user}".into(), "localhost".into());
        let bob = root.join("bob");
        let secret = deliver(&bob, b"Subject: secret of bob\n\nx\n").unwrap();
        deliver(&root.join("alice"), b"Subject: quarantined\n\nx\n").unwrap();
        deliver(&root.join("alice"), b"Subject: kept\n\nx\n").unwrap();
        let mut m = store.open_admin("alice").unwrap();
        m.quarantine(0).unwrap();
        let q = m.quarantined().unwrap().remove(0);
        drop(m);
        let cur = root.join("alice").join(QUARANTINE_FOLDER).join("cur");
        let (plain, link) = (cur.join(".plain"), cur.join(".link"));
        std::fs::copy(&q.path, &plain).unwrap();
        let stop = AtomicBool::new(false);
        std::thread::scope(|scope| {
            scope.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    let _ = std::os::unix::fs::symlink(bob.join("new").join(&secret), &link);
                    let _ = std::fs::rename(&link, &q.path);
                    let _ = std::fs::hard_link(&plain, &link);
                    let _ = std::fs::rename(&link, &q.path);
                }
            });
            let mut leaked = None;
            for _ in 0..1000 {
                let Ok(mut m) = store.open_admin("alice") else {
                    continue;
                };
                let mut out = Vec::new();
                let done = inspect(&mut m, "alice", u64::MAX, &mut out);
                let out = String::from_utf8_lossy(&out).into_owned();
                if let Err(e) = done {
                    // One file swapped mid-listing must not fail it all.
                    leaked = Some(format!("inspect failed: {e}"));
                    break;
                }
                if out.contains("secret of bob") {
                    leaked = Some(out);
                    break;
                }
            }
            stop.store(true, Ordering::Relaxed);
            assert_eq!(leaked, None);
        });
    }

    #[test]
    fn message_numbers_follow_the_pop3_rule() {
        assert_eq!(index_of_number("1", 2).unwrap().get(), 0);
        assert_eq!(index_of_number("002", 2).unwrap().get(), 1);
        for (text, count, said) in [
            ("3", 2, "no message 3: the maildrop has 2 messages"),
            ("1", 0, "no message 1: the maildrop has 0 messages"),
            (
                "0",
                1,
                "no message with that number: the maildrop has 1 message",
            ),
            ("+1", 2, "no message with that number"),
            ("1a", 2, "no message with that number"),
            ("", 2, "no message with that number"),
            ("4294967296", usize::MAX, "no message with that number"),
        ] {
            let e = index_of_number(text, count).unwrap_err().to_string();
            assert!(e.starts_with(said), "{text}: {e}");
        }
    }

    /// The Maildir commands, given a PostgreSQL configuration, say so and
    /// touch no path.
    #[test]
    fn the_maildir_commands_refuse_another_store_kind() {
        let dir = tempfile::tempdir().unwrap();
        let text = "[pop3]\nlisten = [\"127.0.0.1:0\"]\n[store]\nkind = \"postgres\"\n\
                    url = \"host=localhost dbname=mailbag\"\n[auth]\n";
        let config = Config::parse(text, dir.path()).unwrap();
        for command in [
            MailboxCommand::Inspect {
                user: "alice".into(),
            },
            MailboxCommand::Quarantine {
                user: "alice".into(),
                message: "1".into(),
            },
        ] {
            let mut out = Vec::new();
            let e = run(&config, command, &mut out).unwrap_err();
            assert!(
                matches!(
                    e,
                    MailboxError::MaildirOnly {
                        kind: "postgres",
                        ..
                    }
                ),
                "{e}"
            );
            assert!(out.is_empty());
        }
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn header_block_stops_at_the_blank_line_and_is_safe_to_print() {
        assert_eq!(
            header_block(b"Subject: a\r\nFrom: b\r\n\r\nbody\r\n"),
            "Subject: a\nFrom: b\n"
        );
        assert_eq!(header_block(b"Subject: a\n\nbody\n"), "Subject: a\n");
        assert_eq!(
            header_block(b"Subject: \x1b[2Jx\0\rz\nno end"),
            "Subject: ?[2Jx??z\nno end\n"
        );
        assert_eq!(header_block(b""), "");
    }
}
