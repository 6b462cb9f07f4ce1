//! The store boundary: maildrops that a POP3 session opens, reads and
//! commits, and the delivery path that fills them.
//!
//! One trait pair, three backends (`maildir`, `mbox`, `postgres`). The
//! server is generic over [`Store`], so dispatch is static.
//!
//! Semantics (DESIGN.md, not negotiable): `open` locks the maildrop
//! exclusively and takes a snapshot before the client sees `+OK`;
//! `commit` is the only path that deletes; dropping a [`Maildrop`] unlocks
//! and deletes nothing.

pub mod deliver;
pub mod maildir;
pub mod mbox;
pub mod postgres;
pub mod summary;

use std::future::Future;
use std::io;

use tokio::io::AsyncRead;

pub use mailbag_proto::pop3::MessageInfo;

/// What can go wrong at the store, in the shapes callers branch on.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Another session holds the maildrop lock (`-ERR [IN-USE]`).
    #[error("maildrop is locked by another session")]
    Locked,
    /// The message was removed by another program during the session.
    #[error("message no longer exists")]
    Vanished,
    /// A failure that may go away if the client tries again (`[SYS/TEMP]`).
    #[error("temporary store failure")]
    Temporary(#[source] io::Error),
    /// A failure that will not go away by itself (`[SYS/PERM]`).
    #[error("permanent store failure: {0}")]
    Permanent(String),
}

impl From<io::Error> for StoreError {
    fn from(e: io::Error) -> Self {
        StoreError::Temporary(e)
    }
}

/// Which maildrop: a user's, found by the store's own rule (the path
/// template, the spool template, the user's row), unless the user's
/// entry in the directory names it (`maildrop`, a path relative to the
/// store's root, checked by [`check_maildrop`] before it is used).
///
/// Backends: Maildir takes `maildrop` as the Maildir's path below
/// `store.root`; mbox as the spool's file name in the spool directory
/// (one component only); PostgreSQL ignores it (the maildrop is the
/// user's row). Two users whose entries name one maildrop share it, and
/// its lock: a session of one keeps the other out (`[IN-USE]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mailbox<'a> {
    /// The canonical user name.
    pub name: &'a str,
    /// The maildrop the user's entry names, unchecked.
    pub maildrop: Option<&'a str>,
}

impl<'a> From<&'a str> for Mailbox<'a> {
    fn from(name: &'a str) -> Self {
        Mailbox {
            name,
            maildrop: None,
        }
    }
}

impl<'a> From<&'a String> for Mailbox<'a> {
    fn from(name: &'a String) -> Self {
        Mailbox::from(name.as_str())
    }
}

/// Longest maildrop path from a user's entry, in octets.
pub const MAX_MAILDROP_OCTETS: usize = 1024;
/// Most components in a maildrop path from a user's entry.
pub const MAX_MAILDROP_DEPTH: usize = 16;
/// Longest component of one (a file name on most filesystems).
const MAX_COMPONENT_OCTETS: usize = 255;

/// The components of `maildrop`, a path from a user's entry (a directory
/// administrator, or a user who may edit their own entry, wrote it): only
/// a relative path of plain names, `example.org/alice/` (one trailing
/// `/` allowed, as PostfixAdmin writes it). Refused: absolute paths,
/// `.`, `..`, components that start with `.`, empty components (`a//b`), NUL and other control
/// characters, more than [`MAX_MAILDROP_OCTETS`] octets or
/// [`MAX_MAILDROP_DEPTH`] components, a component over 255 octets.
pub fn check_maildrop(maildrop: &str) -> Result<Vec<&str>, StoreError> {
    let refused =
        |why: &str| StoreError::Permanent(format!("maildrop from the user's entry refused: {why}"));
    if maildrop.len() > MAX_MAILDROP_OCTETS {
        return Err(refused("too long"));
    }
    if maildrop.starts_with('/') {
        return Err(refused(
            "an absolute path; give it relative to the store's root",
        ));
    }
    if maildrop.chars().any(char::is_control) {
        return Err(refused("control characters"));
    }
    let trimmed = maildrop.strip_suffix('/').unwrap_or(maildrop);
    let parts: Vec<&str> = trimmed.split('/').collect();
    if parts.len() > MAX_MAILDROP_DEPTH {
        return Err(refused("too many components"));
    }
    for part in &parts {
        match *part {
            "" => return Err(refused("an empty component")),
            "." | ".." => return Err(refused("a . or .. component")),
            // Maildir++ folders and the store's own files start with '.'.
            p if p.starts_with('.') => return Err(refused("a component that starts with '.'")),
            p if p.len() > MAX_COMPONENT_OCTETS => return Err(refused("a component too long")),
            _ => {}
        }
    }
    Ok(parts)
}

/// A mail store: opens maildrops for users.
pub trait Store: Send + Sync + 'static {
    /// The locked maildrop of one user.
    type Maildrop: Maildrop;

    /// The store keeps bodies in canonical form, CRLF line ends whatever
    /// they came with (PostgreSQL): delivery hands it messages as they
    /// came, and copies out into mail files get LF ends again. Other
    /// stores keep mail files, which delivery gives LF ends (the form
    /// Maildir and mbox tools expect), and copies out of them keep every
    /// octet.
    const KEEPS_CRLF: bool = false;

    /// Locks `user`'s maildrop and snapshots its messages. A user whose
    /// maildrop does not exist yet gets an empty one. A maildrop from the
    /// user's entry that [`check_maildrop`] refuses is
    /// [`StoreError::Permanent`].
    fn open(
        &self,
        user: Mailbox<'_>,
    ) -> impl Future<Output = Result<Self::Maildrop, StoreError>> + Send;

    /// Delivers `message` into `user`'s maildrop, durably: when this
    /// returns `Ok`, the message survives a crash, and on `Err` nothing
    /// of it is visible to a session. Needs no lock, so it works while a
    /// session holds the maildrop (which will not see the new message).
    /// Returns the new message's identifier in the store.
    fn deliver(
        &self,
        user: Mailbox<'_>,
        message: Vec<u8>,
    ) -> impl Future<Output = Result<String, StoreError>> + Send;

    /// How much `user`'s maildrop holds now, for quota checks. Cheap
    /// rather than exact under concurrent change.
    fn usage(&self, user: Mailbox<'_>) -> impl Future<Output = Result<Usage, StoreError>> + Send;

    /// The CRLF size `message` has in a maildrop once delivered, as
    /// [`Store::usage`] then counts it: its canonical size, unless the
    /// store changes the message (an mbox quotes `From ` lines).
    fn delivered_size(&self, message: &[u8]) -> u64 {
        mailbag_proto::dot::canonical_size(message)
    }
}

/// A maildrop found locked is tried again after each of these waits
/// before the opener is told [`StoreError::Locked`] (`[IN-USE]` at a
/// login, "in use" from an admin command). The session holding it may be
/// ending: its QUIT answered a moment ago while its connection closes, or
/// its connection just dropped and the unlock is on its way (to
/// PostgreSQL, a round trip; a process that exits leaves it to
/// PostgreSQL to notice the closed connection). An opener that comes
/// straight after is not turned away for that; one that meets a live
/// session waits a quarter of a second more for its answer.
pub const LOCKED_WAITS: [std::time::Duration; 3] = [
    std::time::Duration::from_millis(25),
    std::time::Duration::from_millis(75),
    std::time::Duration::from_millis(150),
];

/// [`Store::open`], tried again after each of [`LOCKED_WAITS`] while the
/// maildrop is locked. Every opener of a maildrop (a POP3 login, an admin
/// command) goes through it, so they wait alike.
pub async fn open_waiting<S: Store>(
    store: &S,
    user: Mailbox<'_>,
) -> Result<S::Maildrop, StoreError> {
    let mut waits = LOCKED_WAITS.iter();
    loop {
        match store.open(user).await {
            Err(StoreError::Locked) => match waits.next() {
                Some(wait) => tokio::time::sleep(*wait).await,
                None => return Err(StoreError::Locked),
            },
            opened => return opened,
        }
    }
}

/// `open` (an admin's synchronous open of a Maildir or an mbox spool),
/// tried again after each of [`LOCKED_WAITS`] while it is
/// [`StoreError::Locked`], as [`open_waiting`] does.
pub fn open_waiting_blocking<T>(
    mut open: impl FnMut() -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    let mut waits = LOCKED_WAITS.iter();
    loop {
        match open() {
            Err(StoreError::Locked) => match waits.next() {
                Some(wait) => std::thread::sleep(*wait),
                None => return Err(StoreError::Locked),
            },
            opened => return opened,
        }
    }
}

/// The size of a maildrop.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Messages held.
    pub messages: u64,
    /// Their total size in CRLF octets (as POP3 STAT counts them).
    pub octets: u64,
}

/// One message's stored bytes (line endings as stored), as RETR and TOP
/// read them.
pub trait MessageBody: AsyncRead + Unpin + Send + 'static {
    /// The whole message, when the store already holds it in memory (a
    /// small one): the driver then transforms it in one pass instead of
    /// copying it through a read buffer first.
    fn in_memory(&self) -> Option<&[u8]> {
        None
    }

    /// The next piece of the message; empty at its end. A store that
    /// already holds the octets in its own buffers (PostgreSQL rows) hands
    /// them over without a copy; by default they are read into `buf`.
    fn next_piece<'a>(
        &'a mut self,
        buf: &'a mut Vec<u8>,
    ) -> impl std::future::Future<Output = std::io::Result<&'a [u8]>> + Send {
        async move {
            buf.clear();
            tokio::io::AsyncReadExt::read_buf(self, buf).await?;
            Ok(&buf[..])
        }
    }
}

/// A maildrop locked for one session. Dropping it releases the lock and
/// deletes nothing.
pub trait Maildrop: Send + 'static {
    /// The stream of one message's stored bytes (line endings as stored).
    type Reader: MessageBody;

    /// The snapshot taken at open, in message-number order.
    fn messages(&self) -> &[MessageInfo];

    /// How many messages the store found but left out of the snapshot
    /// because they cannot be read (SUMMARY reports it).
    fn unreadable(&self) -> usize {
        0
    }

    /// Opens message `index` (0-based into the snapshot) for reading.
    /// A message removed by another program is [`StoreError::Vanished`].
    fn read(
        &mut self,
        index: usize,
    ) -> impl Future<Output = Result<Self::Reader, StoreError>> + Send;

    /// The UPDATE state (RFC 1939 §6): removes the messages at `deleted`,
    /// marks those at `retrieved` as seen, and releases the lock.
    fn commit(
        self,
        deleted: &[usize],
        retrieved: &[usize],
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maildrops_from_entries_are_relative_paths_of_plain_names() {
        assert_eq!(
            check_maildrop("example.org/alice/").unwrap(),
            ["example.org", "alice"]
        );
        assert_eq!(check_maildrop("alice").unwrap(), ["alice"]);
        let deep = vec!["d"; MAX_MAILDROP_DEPTH].join("/");
        assert!(check_maildrop(&deep).is_ok());
        let long = "x".repeat(255);
        assert!(check_maildrop(&long).is_ok());
        let refused = [
            String::new(),
            "/".into(),
            "/etc".into(),
            "/var/mail/alice/".into(),
            "../other".into(),
            "example.org/../bob".into(),
            "./alice".into(),
            "alice/.".into(),
            "alice//".into(),
            "a//b".into(),
            "alice/.Trash".into(),
            "al\0ice".into(),
            "al\nice".into(),
            "x".repeat(256),
            format!("{deep}/d"),
            "a/".repeat(MAX_MAILDROP_OCTETS / 2 + 1),
        ];
        for path in refused {
            assert!(
                matches!(check_maildrop(&path), Err(StoreError::Permanent(_))),
                "{path:?} accepted"
            );
        }
    }
}
