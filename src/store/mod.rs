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

/// A mail store: opens maildrops for users.
pub trait Store: Send + Sync + 'static {
    /// The locked maildrop of one user.
    type Maildrop: Maildrop;

    /// Locks `user`'s maildrop and snapshots its messages. A user whose
    /// maildrop does not exist yet gets an empty one.
    fn open(&self, user: &str) -> impl Future<Output = Result<Self::Maildrop, StoreError>> + Send;

    /// Delivers `message` into `user`'s maildrop, durably: when this
    /// returns `Ok`, the message survives a crash, and on `Err` nothing
    /// of it is visible to a session. Needs no lock, so it works while a
    /// session holds the maildrop (which will not see the new message).
    /// Returns the new message's identifier in the store.
    fn deliver(
        &self,
        user: &str,
        message: Vec<u8>,
    ) -> impl Future<Output = Result<String, StoreError>> + Send;

    /// How much `user`'s maildrop holds now, for quota checks. Cheap
    /// rather than exact under concurrent change.
    fn usage(&self, user: &str) -> impl Future<Output = Result<Usage, StoreError>> + Send;

    /// The CRLF size `message` has in a maildrop once delivered, as
    /// [`Store::usage`] then counts it: its canonical size, unless the
    /// store changes the message (an mbox quotes `From ` lines).
    fn delivered_size(&self, message: &[u8]) -> u64 {
        mailbag_proto::dot::canonical_size(message)
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
