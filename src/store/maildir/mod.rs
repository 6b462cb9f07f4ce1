//! The Maildir backend of [`Store`]: one Maildir per user, found by a path
//! template, locked with `flock` on `<maildir>/mailbag.lock` for the life
//! of a session, and read as a snapshot of new/ and cur/ taken at open.
//!
//! Other programs (MDAs, IMAP servers, mutt) share the Maildir while a POP3
//! session runs: they may deliver into new/, rename new/ → cur/ or change
//! flags. Messages are therefore tracked by their base name (the part of
//! the file name before ':'), which no program changes, and a path that
//! has gone is looked up again by base name. Nothing is deleted outside
//! [`Maildrop::commit`], and a message delivered after the snapshot is
//! never touched.
//!
//! Everything inside the Maildir is the mailbox owner's input: names,
//! caches, the UPDATE record and the directories themselves. Every file
//! operation goes through directory descriptors opened without following
//! symlinks (`dirs.rs`), one path component at a time, and every name
//! read from a file must be one plain file name (`name::is_component`).
//! Filesystem work runs in `spawn_blocking`, except the open and read of
//! a small message; bad input never causes a panic.

mod courier;
mod deliver;
mod dirs;
mod dovecot;
mod fingerprint;
mod foreign;
mod listing;
mod name;
mod quarantine;
mod shown;
mod size;
pub mod source;
mod update;
mod usage;
mod xuidl;

use std::collections::{HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::fs::{File, TryLockError};
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::stat::Mode;

#[doc(hidden)]
pub use courier::parse as parse_courier_sizelist;
pub use deliver::deliver;
#[doc(hidden)]
pub use dovecot::parse as parse_dovecot_uidlist;
pub use dovecot::{Template as DovecotUidlFormat, DEFAULT_FORMAT as DOVECOT_DEFAULT_UIDL_FORMAT};
pub use fingerprint::{ContentKey, Fingerprint, Fingerprints};
pub use foreign::{uidls_of, UidlSources};
#[doc(hidden)]
pub use listing::{parse as parse_listing, Listing};
pub use quarantine::{AdminMaildrop, Quarantined, FOLDER as QUARANTINE_FOLDER};
#[doc(hidden)]
pub use shown::{
    encode as encode_shown, parse_entries as parse_shown, parse_with_since as parse_shown_since,
};
#[doc(hidden)]
pub use size::parse_entries as parse_sizes;
#[doc(hidden)]
pub use update::{encode as encode_update, parse as parse_update};
pub use xuidl::parse as parse_x_uidl;

use dirs::{Dirs, Location};

use super::{Mailbox, Maildrop, MessageBody, MessageInfo, Store, StoreError, Usage};

/// What the file name parser makes of one name; for the fuzz target only.
#[doc(hidden)]
#[derive(Debug)]
pub struct FuzzName {
    /// The part before the first `:`.
    pub base: Vec<u8>,
    /// The UIDL derived from the base.
    pub uidl: String,
    /// The cur/ name once the message is retrieved, if it changes.
    pub seen_name: Option<Vec<u8>>,
}

/// Runs the private name parser on `name`; for the fuzz target only.
#[doc(hidden)]
pub fn fuzz_name(name: &[u8]) -> FuzzName {
    let parsed = name::parse(name);
    FuzzName {
        base: parsed.base.to_vec(),
        uidl: name::uidl(parsed.base),
        seen_name: name::seen_name(name),
    }
}

/// The lock file inside each Maildir: held with an exclusive `flock` for
/// the life of a session, so the kernel releases it when the process dies.
/// The lock that keeps sessions apart is the `flock` on the Maildir's own
/// directory descriptor (it needs no file the server can write); the
/// lock file is locked as well, when it can be opened, for mailbag
/// processes of earlier versions that lock only the file.
const LOCK_FILE: &str = "mailbag.lock";

/// Longest user name accepted, in octets (the longest file name on most
/// filesystems).
const MAX_USER_OCTETS: usize = 255;

/// Maildirs under one data root, one per user, found by a path template.
#[derive(Debug, Clone)]
pub struct MaildirStore {
    root: PathBuf,
    template: String,
    default_domain: String,
    /// Where UIDLs another server showed come from (none by default).
    uidl_sources: Arc<UidlSources>,
}

impl MaildirStore {
    /// `root` is the data root; `template` names a user's Maildir, e.g.
    /// `"{root}/{domain}/{user}/Maildir"`, with `{root}`, `{user}` (the local
    /// part), `{domain}` (after '@', or `default_domain` when the name has
    /// none) and `{name}` (the whole user name).
    pub fn new(root: PathBuf, template: String, default_domain: String) -> Self {
        MaildirStore {
            root,
            template,
            default_domain,
            uidl_sources: Arc::default(),
        }
    }

    /// The same store, taking UIDLs that another server showed from
    /// `sources` (see `foreign.rs`).
    pub fn with_uidl_sources(mut self, sources: UidlSources) -> Self {
        self.uidl_sources = Arc::new(sources);
        self
    }

    /// Records that the message with base name `base` in `user`'s Maildir
    /// has UIDL `uidl`, for each pair, in `mailbag.uidls`: crash-safe,
    /// under the maildrop lock (so [`StoreError::Locked`] while a session
    /// holds it), before the next open shows them. A UIDL once recorded
    /// never changes, so a base already recorded keeps its UIDL; a pair is
    /// also refused when the base is not a message in new/ or cur/, the
    /// UIDL is not one RFC 1939 allows, or another message has it (as its
    /// recorded UIDL or its base-name form). Call it before mailbag first
    /// serves the maildrop: a message already shown under mailbag's own
    /// form without a record would change its UIDL.
    pub async fn record_uidls(
        &self,
        user: &str,
        pairs: Vec<(Vec<u8>, String)>,
    ) -> Result<RecordedUidls, StoreError> {
        let at = self.location(user)?;
        blocking(move || record_uidls_at(&at, &pairs)).await
    }

    /// The Maildir of `user`. A name that could escape its directory or
    /// hide its Maildir (separators, NUL, control characters, "..", a
    /// leading '.', an empty part, more than 255 octets) is refused as
    /// [`StoreError::Permanent`], as is any result outside the root.
    pub fn maildir_path(&self, user: &str) -> Result<PathBuf, StoreError> {
        if user.len() > MAX_USER_OCTETS {
            return Err(refused("too long"));
        }
        check_part(user)?;
        let (local, domain) = match user.split_once('@') {
            Some((local, domain)) => (local, domain),
            None => (user, self.default_domain.as_str()),
        };
        check_part(local)?;
        if self.template.contains("{domain}") {
            check_part(domain)?;
            if domain.contains('@') {
                return Err(refused("more than one '@'"));
            }
        }

        let mut path = OsString::new();
        let mut rest = self.template.as_str();
        while let Some(open) = rest.find('{') {
            path.push(&rest[..open]);
            let after = &rest[open + 1..];
            let close = after.find('}').ok_or_else(bad_template)?;
            match &after[..close] {
                "root" => path.push(self.root.as_os_str()),
                "user" => path.push(local),
                "domain" => path.push(domain),
                "name" => path.push(user),
                _ => return Err(bad_template()),
            }
            rest = &after[close + 1..];
        }
        path.push(rest);
        let path = PathBuf::from(path);

        let below_root = match path.strip_prefix(&self.root) {
            Ok(rest) => rest.components().all(|c| matches!(c, Component::Normal(_))),
            Err(_) => false,
        };
        if !below_root || path == self.root {
            return Err(StoreError::Permanent(
                "maildir path is not under the data root".into(),
            ));
        }
        Ok(path)
    }

    /// Where `user`'s Maildir is: the data root, and the components below
    /// it, which are walked without following symlinks.
    fn location(&self, user: &str) -> Result<Location, StoreError> {
        Location::under(&self.root, &self.maildir_path(user)?)
    }

    /// Where the Maildir of `mailbox` is: by the path template, or, when
    /// the user's entry names it, that path below the data root, checked
    /// by [`check_maildrop`](super::check_maildrop) and walked like any
    /// other (never the template's path instead: a refused path refuses
    /// the user).
    fn location_of(&self, mailbox: Mailbox<'_>) -> Result<Location, StoreError> {
        let Some(maildrop) = mailbox.maildrop else {
            return self.location(mailbox.name);
        };
        let mut path = self.root.clone();
        for part in super::check_maildrop(maildrop)? {
            path.push(part);
        }
        Location::under(&self.root, &path)
    }

    /// Delivers `message` durably into `user`'s Maildir (see [`deliver`])
    /// and returns its base name.
    pub async fn deliver(&self, user: &str, message: Vec<u8>) -> Result<String, StoreError> {
        self.deliver_to(user.into(), message).await
    }

    /// Delivers `message` durably into the Maildir of `mailbox`.
    async fn deliver_to(
        &self,
        mailbox: Mailbox<'_>,
        message: Vec<u8>,
    ) -> Result<String, StoreError> {
        let at = self.location_of(mailbox)?;
        blocking(move || deliver::deliver_at(&at, &message)).await
    }
}

fn refused(why: &str) -> StoreError {
    StoreError::Permanent(format!("user name refused: {why}"))
}

fn bad_template() -> StoreError {
    StoreError::Permanent("maildir template has an unknown or unclosed {placeholder}".into())
}

/// One part of a user name that becomes (part of) a path component.
fn check_part(part: &str) -> Result<(), StoreError> {
    // The one name rule, which every entry point shares.
    crate::auth::name::check(part).map_err(|e| refused(e.why))
}

async fn blocking<T, F>(f: F) -> Result<T, StoreError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, StoreError> + Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StoreError::Temporary(io::Error::other(e)))?
}

/// Problems already logged, by Maildir and kind: a problem that every
/// login meets (a cache the server cannot read, a message it cannot read)
/// is logged once per maildrop, not once per session. Bounded: when full,
/// it starts over, so a problem may be logged again, rarely.
static LOGGED: Mutex<Option<HashSet<(PathBuf, &'static str)>>> = Mutex::new(None);
/// How many (Maildir, problem) pairs [`LOGGED`] remembers.
const LOGGED_MAX: usize = 4096;

/// Logs `what` about `maildir` once (see [`LOGGED`]).
pub(crate) fn warn_once(maildir: &Path, what: &'static str, detail: &dyn std::fmt::Display) {
    let first = {
        let mut logged = LOGGED.lock().unwrap_or_else(|e| e.into_inner());
        let set = logged.get_or_insert_with(HashSet::new);
        if set.len() >= LOGGED_MAX {
            set.clear();
        }
        set.insert((maildir.to_path_buf(), what))
    };
    if first {
        tracing::warn!(maildir = %maildir.display(), detail = %detail, "{what}");
    }
}

impl Store for MaildirStore {
    type Maildrop = MaildirMaildrop;

    async fn open(&self, user: Mailbox<'_>) -> Result<MaildirMaildrop, StoreError> {
        let at = self.location_of(user)?;
        let sources = Arc::clone(&self.uidl_sources);
        blocking(move || MaildirMaildrop::open(&at, &sources)).await
    }

    async fn deliver(&self, user: Mailbox<'_>, message: Vec<u8>) -> Result<String, StoreError> {
        self.deliver_to(user, message).await
    }

    async fn usage(&self, user: Mailbox<'_>) -> Result<Usage, StoreError> {
        let at = self.location_of(user)?;
        blocking(move || usage::usage(&at)).await
    }
}

/// Which of the two message directories a file is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sub {
    New,
    Cur,
}

/// Where one message of the snapshot currently is.
#[derive(Debug, Clone)]
struct Entry {
    sub: Sub,
    /// The full file name, flags included: one path component.
    name: OsString,
    /// The length of the base name, a prefix of `name`.
    base_len: usize,
}

impl Entry {
    fn new(sub: Sub, name: OsString) -> Self {
        let base_len = name::parse(name.as_bytes()).base.len();
        Entry {
            sub,
            name,
            base_len,
        }
    }

    fn base(&self) -> &[u8] {
        &self.name.as_bytes()[..self.base_len]
    }

    /// The path, for messages and logs only: files are opened relative
    /// to the directory descriptors.
    fn path(&self, maildir: &Path) -> PathBuf {
        maildir.join(self.sub.dir()).join(&self.name)
    }
}

impl Sub {
    fn dir(self) -> &'static str {
        match self {
            Sub::New => "new",
            Sub::Cur => "cur",
        }
    }
}

/// A user's Maildir, locked for one POP3 session, with the snapshot taken
/// at open. Dropping it releases the lock and deletes nothing.
#[derive(Debug)]
pub struct MaildirMaildrop {
    /// The lock file, held only for its `flock` (the lock on the Maildir's
    /// own descriptor, in `dirs`, is the one that counts).
    _lock: Option<File>,
    /// The Maildir, new/ and cur/, opened without following symlinks;
    /// every file of the session is opened relative to them.
    dirs: Arc<Dirs>,
    entries: Vec<Entry>,
    infos: Vec<MessageInfo>,
    /// Messages left out of the snapshot because they cannot be read.
    unreadable: usize,
}

impl MaildirMaildrop {
    fn open(at: &Location, sources: &Arc<UidlSources>) -> Result<Self, StoreError> {
        let dirs = Dirs::open(at, true)?
            .ok_or_else(|| StoreError::Permanent("maildir was not created".into()))?;
        let lock = lock(&dirs)?;
        finish_interrupted_update(&dirs);
        let mut snap = snapshot(&dirs)?;
        // Before any UIDL is answered: foreign UIDLs, and the record of
        // those shown.
        foreign::resolve(
            &dirs,
            sources,
            &mut snap.entries,
            &mut snap.infos,
            Some(&snap.unreadable_bases),
        );
        Ok(MaildirMaildrop {
            _lock: lock,
            dirs: Arc::new(dirs),
            entries: snap.entries,
            infos: snap.infos,
            unreadable: snap.unreadable,
        })
    }

    fn commit_blocking(mut self, deleted: &[usize], retrieved: &[usize]) -> Result<(), StoreError> {
        let result = commit_entries(&self.dirs, &mut self.entries, deleted, retrieved);
        // The lock goes with `self` here, after the directories are synced.
        drop(self);
        result
    }
}

/// Finishes the deletions of an UPDATE that a crash interrupted (see
/// `update.rs`). A failure is logged and the open goes on: the record
/// stays, and the next open tries again.
fn finish_interrupted_update(dirs: &Dirs) {
    match update::recover(dirs) {
        Ok(0) => {}
        Ok(n) => tracing::info!(
            maildir = %dirs.path.display(),
            removed = n,
            "finished an interrupted UPDATE"
        ),
        Err(e) => warn_once(&dirs.path, "cannot finish an interrupted UPDATE", &e),
    }
}

/// The UPDATE state over a snapshot's entries: deletions all or nothing
/// (a durable record first, see `update.rs`), then seen-marks, whose
/// failures are logged and do not fail the UPDATE (the messages are
/// still there, only not marked).
fn commit_entries(
    dirs: &Dirs,
    entries: &mut [Entry],
    deleted: &[usize],
    retrieved: &[usize],
) -> Result<(), StoreError> {
    if deleted.is_empty() && retrieved.is_empty() {
        // Nothing changes: no directory needs an fsync (most polling
        // sessions end this way).
        return Ok(());
    }
    let n = entries.len();
    let mut is_deleted = vec![false; n];
    let mut is_retrieved = vec![false; n];
    for (indices, marks) in [(deleted, &mut is_deleted), (retrieved, &mut is_retrieved)] {
        for &i in indices {
            match marks.get_mut(i) {
                Some(mark) => *mark = true,
                None => return Err(StoreError::Permanent("message index out of range".into())),
            }
        }
    }
    let mut relocated = false;
    let mut first: Option<StoreError> = None;
    if is_deleted.contains(&true) {
        // Nothing is removed unless the record of all of it is durable.
        update::begin(
            dirs,
            (0..n)
                .filter(|&i| is_deleted[i])
                .map(|i| (entries[i].sub, entries[i].name.as_os_str())),
        )?;
        for i in (0..n).filter(|&i| is_deleted[i]) {
            // Not found even after relocation: gone, which is fine.
            if let Err(e) = with_relocation(dirs, entries, i, &mut relocated, |e| remove(dirs, e)) {
                tracing::warn!(error = %e, maildir = %dirs.path.display(), "maildrop commit: delete");
                first.get_or_insert(e.into());
            }
        }
        let synced = dirs::sync(dirs.new.as_fd()).and_then(|()| dirs::sync(dirs.cur.as_fd()));
        match synced {
            // Done and durable: the record has served its purpose. If a
            // deletion failed, the record stays and the next open tries it
            // again.
            Ok(()) if first.is_none() => {
                if let Err(e) = update::end(dirs) {
                    tracing::warn!(error = %e, maildir = %dirs.path.display(), "cannot remove the UPDATE record");
                }
            }
            Ok(()) => {}
            Err(e) => {
                tracing::warn!(error = %e, maildir = %dirs.path.display(), "maildrop commit: sync");
                first.get_or_insert(e.into());
            }
        }
    }
    let mut seen_marked = false;
    for i in (0..n).filter(|&i| is_retrieved[i] && !is_deleted[i]) {
        match with_relocation(dirs, entries, i, &mut relocated, |e| mark_seen(dirs, e)) {
            Ok(_) => seen_marked = true,
            Err(e) => warn_once(&dirs.path, "cannot mark retrieved messages as seen", &e),
        }
    }
    if seen_marked {
        for dir in [dirs.new.as_fd(), dirs.cur.as_fd()] {
            if let Err(e) = dirs::sync(dir) {
                warn_once(&dirs.path, "cannot sync seen-marks", &e);
            }
        }
    }
    first.map_or(Ok(()), Err)
}

/// Messages up to this size are read whole by the blocking call that
/// opens them: one trip to the blocking pool instead of three (open, read,
/// end of file) for the typical message.
const READ_WHOLE_OCTETS: u64 = 128 * 1024;

/// One message being read: in memory when small, streamed from its file
/// otherwise (never a whole large message in memory).
#[derive(Debug)]
pub enum MessageReader {
    /// A small message, read whole.
    Memory(std::io::Cursor<Vec<u8>>),
    /// A larger message, streamed.
    File(tokio::fs::File),
}

impl tokio::io::AsyncRead for MessageReader {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        match self.get_mut() {
            MessageReader::Memory(c) => std::pin::Pin::new(c).poll_read(cx, buf),
            MessageReader::File(f) => std::pin::Pin::new(f).poll_read(cx, buf),
        }
    }
}

impl MessageBody for MessageReader {
    fn in_memory(&self) -> Option<&[u8]> {
        match self {
            MessageReader::Memory(c) => Some(c.get_ref()),
            MessageReader::File(_) => None,
        }
    }
}

/// Opens a message for [`MessageReader`]; `None` when it has gone.
fn open_message(dirs: &Dirs, entry: &Entry) -> Result<Option<MessageReader>, StoreError> {
    reader_for(dirs::open_read(dirs.sub(entry.sub), &entry.name), || {
        entry.path(&dirs.path)
    })
}

/// A [`MessageReader`] for what an open of a message's file found:
/// small messages are read whole at once, larger ones streamed.
fn reader_for(
    opened: io::Result<File>,
    path: impl FnOnce() -> PathBuf,
) -> Result<Option<MessageReader>, StoreError> {
    let Some((mut file, len)) = regular_with_len(opened, path)? else {
        return Ok(None);
    };
    if len <= READ_WHOLE_OCTETS {
        let bytes = read_whole(&mut file, len as usize)?;
        return Ok(Some(MessageReader::Memory(std::io::Cursor::new(bytes))));
    }
    Ok(Some(MessageReader::File(tokio::fs::File::from_std(file))))
}

/// Reads a file of `len` octets (from its `fstat`) whole, normally in one
/// `read`: the buffer has room for one octet more, and a read that stops
/// short of it at `len` is the end of the file. A file that turns out
/// shorter or longer than `len` is read on to its real end.
/// (`read_to_end` would also `fstat` and `lseek` the file and probe for
/// its end with a second `read`: three system calls more per RETR.)
fn read_whole(file: &mut File, len: usize) -> io::Result<Vec<u8>> {
    let mut bytes = vec![0; len + 1];
    let mut filled = 0;
    loop {
        if filled == bytes.len() {
            bytes.resize(filled * 2, 0);
        }
        match io::Read::read(file, &mut bytes[filled..]) {
            Ok(0) => break,
            Ok(n) => {
                filled += n;
                if filled == len {
                    break;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    bytes.truncate(filled);
    Ok(bytes)
}

impl Maildrop for MaildirMaildrop {
    type Reader = MessageReader;

    fn messages(&self) -> &[MessageInfo] {
        &self.infos
    }

    fn unreadable(&self) -> usize {
        self.unreadable
    }

    async fn read(&mut self, index: usize) -> Result<MessageReader, StoreError> {
        let entry = self
            .entries
            .get(index)
            .ok_or_else(|| StoreError::Permanent("message index out of range".into()))?;
        let small = self
            .infos
            .get(index)
            .is_some_and(|m| m.size <= READ_WHOLE_OCTETS);
        // A small message is opened (one `openat` relative to new/ or
        // cur/) and read right here: from the page cache that takes
        // microseconds, less than the trip to the blocking pool would.
        // Larger ones go to the pool.
        let found = if small {
            open_message(&self.dirs, entry)?
        } else {
            let dirs = Arc::clone(&self.dirs);
            let entry = entry.clone();
            blocking(move || open_message(&dirs, &entry)).await?
        };
        if let Some(reader) = found {
            return Ok(reader);
        }
        let dirs = Arc::clone(&self.dirs);
        let mut entries = self.entries.clone();
        let (entries, reader) = blocking(move || {
            relocate(&dirs, &mut entries)?;
            let reader = open_message(&dirs, &entries[index])?;
            Ok((entries, reader))
        })
        .await?;
        self.entries = entries;
        reader.ok_or(StoreError::Vanished)
    }

    async fn commit(self, deleted: &[usize], retrieved: &[usize]) -> Result<(), StoreError> {
        if deleted.is_empty() && retrieved.is_empty() {
            // Nothing to change (most polling sessions end this way):
            // unlocking is closing a descriptor, no work for the blocking
            // pool and no trip there and back.
            drop(self);
            return Ok(());
        }
        let deleted = deleted.to_vec();
        let retrieved = retrieved.to_vec();
        blocking(move || self.commit_blocking(&deleted, &retrieved)).await
    }
}

/// Takes the session lock without waiting: a held lock is another session.
///
/// The lock is an exclusive `flock` on the Maildir's directory descriptor:
/// it needs no write access and no file that someone else may own. The
/// lock file is opened (read-write, else read-only: `flock` needs no
/// write access either) relative to the Maildir, never through a symlink,
/// and locked too; one the server cannot open at all is left alone
/// (logged once), never replaced, since another process may hold it.
fn lock(dirs: &Dirs) -> Result<Option<File>, StoreError> {
    match dirs.maildir.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => return Err(StoreError::Locked),
        Err(TryLockError::Error(e)) => return Err(e.into()),
    }
    let shown = || dirs.path.join(LOCK_FILE);
    let open = |flags: OFlag| {
        nix::fcntl::openat(
            dirs.maildir.as_fd(),
            LOCK_FILE,
            flags | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o600),
        )
    };
    let opened = match open(OFlag::O_RDWR | OFlag::O_CREAT) {
        Err(Errno::EACCES | Errno::EPERM | Errno::EROFS) => open(OFlag::O_RDONLY),
        other => other,
    };
    let fd = match opened {
        Ok(fd) => fd,
        Err(Errno::ELOOP | Errno::EISDIR | Errno::ENXIO) => return Err(not_regular(&shown())),
        Err(e @ (Errno::EACCES | Errno::EPERM | Errno::ENOENT)) => {
            warn_once(
                &dirs.path,
                "lock file cannot be opened; the lock on the maildir's directory keeps sessions apart",
                &e,
            );
            return Ok(None);
        }
        Err(e) => return Err(io::Error::from(e).into()),
    };
    let file = File::from(fd);
    if !file.metadata()?.is_file() {
        return Err(not_regular(&shown()));
    }
    match file.try_lock() {
        Ok(()) => Ok(Some(file)),
        Err(TryLockError::WouldBlock) => Err(StoreError::Locked),
        Err(TryLockError::Error(e)) => Err(e.into()),
    }
}

/// One regular file found in new/ or cur/, with what its name says.
struct Found {
    entry: Entry,
    time_key: u128,
    crlf_size: Option<u64>,
    uid: String,
    /// The UIDL is a digest, not the base name itself.
    digest: bool,
}

/// Lists the message files of new/ and cur/: no dotfiles, no symlinks, no
/// directories; from the listing cache while it is still true.
fn list(dirs: &Dirs) -> io::Result<(Vec<Found>, bool)> {
    let stamp = listing::Stamp::read(dirs)?;
    if let Some(names) = listing::load(dirs, stamp) {
        let mut found = Vec::with_capacity(names.len());
        for (in_cur, name) in names {
            let sub = if in_cur { Sub::Cur } else { Sub::New };
            found.push(found_from(sub, OsString::from_vec(name)));
        }
        return Ok((found, true));
    }
    let listed = listing::listing_time();
    let found = scan(dirs)?;
    listing::store(
        dirs,
        stamp,
        listed,
        found
            .iter()
            .map(|f| (f.entry.sub == Sub::Cur, listing::bytes(&f.entry.name))),
    );
    Ok((found, false))
}

/// What the name of a listed file says.
fn found_from(sub: Sub, name: OsString) -> Found {
    let parsed = name::parse(name.as_bytes());
    let uid = name::uidl(parsed.base);
    Found {
        digest: uid.as_bytes() != parsed.base,
        time_key: name::time_key(parsed.timestamp),
        crlf_size: parsed.crlf_size,
        uid,
        entry: Entry {
            base_len: parsed.base.len(),
            sub,
            name,
        },
    }
}

/// Reads new/ and cur/ from the directories themselves.
fn scan(dirs: &Dirs) -> io::Result<Vec<Found>> {
    let mut found: Vec<Found> = Vec::new();
    for sub in [Sub::Cur, Sub::New] {
        // Everything derived from the name is computed here, while the
        // name is hot in cache: later passes visit names in sorted order,
        // which is random order in memory.
        for name in dirs::list_files(dirs.sub(sub))? {
            found.push(found_from(sub, name));
        }
    }
    Ok(found)
}

/// The messages of new/ and cur/ in snapshot order (delivery time, then
/// base name; one entry per base, cur/ first), with their own-form UIDLs
/// and no sizes, read from the directories without touching any cache.
fn listed(dirs: &Dirs) -> io::Result<(Vec<Entry>, Vec<MessageInfo>)> {
    let mut found = scan(dirs)?;
    found.sort_by(|a, b| {
        a.time_key
            .cmp(&b.time_key)
            .then_with(|| a.entry.base().cmp(b.entry.base()))
            .then_with(|| (a.entry.sub == Sub::New).cmp(&(b.entry.sub == Sub::New)))
            .then_with(|| a.entry.name.cmp(&b.entry.name))
    });
    found.dedup_by(|later, earlier| later.entry.base() == earlier.entry.base());
    let infos = found
        .iter_mut()
        .map(|f| MessageInfo {
            uid: std::mem::take(&mut f.uid),
            size: 0,
        })
        .collect();
    Ok((found.into_iter().map(|f| f.entry).collect(), infos))
}

/// A snapshot: the entries, what the client sees of them, and how many
/// messages were left out because they cannot be read.
struct Snapshot {
    entries: Vec<Entry>,
    infos: Vec<MessageInfo>,
    unreadable: usize,
    /// The base names of the messages left out as unreadable (they are
    /// still there: what `mailbag.uidls` says of them is kept).
    unreadable_bases: Vec<Vec<u8>>,
}

/// Lists the Maildir, orders it, makes UIDLs unique and sizes every
/// message: from `W=` when the file's length bears it out, else the size
/// cache, else by reading the file (and then the cache learns it). A
/// message that cannot be read is left out (and counted), not fatal.
fn snapshot(dirs: &Dirs) -> Result<Snapshot, StoreError> {
    let (mut found, reused) = list(dirs)?;
    // Small keys are sorted and each entry is moved once, straight into the
    // snapshot: at 100,000 messages, moving the entries themselves around
    // costs more than the rest of the work.
    let mut order: Vec<(u128, usize)> = found
        .iter()
        .enumerate()
        .map(|(i, f)| (f.time_key, i))
        .collect();
    // Within one base name, cur/ first, then the smaller name: a crash
    // mid-rename leaves the same message in new/ and cur/, and the cur/
    // copy is the one other programs have moved on to.
    order.sort_unstable_by(|&(ka, a), &(kb, b)| {
        let (a, b) = (&found[a].entry, &found[b].entry);
        ka.cmp(&kb)
            .then_with(|| a.base().cmp(b.base()))
            .then_with(|| (a.sub == Sub::New).cmp(&(b.sub == Sub::New)))
            .then_with(|| a.name.cmp(&b.name))
    });
    // The same base has the same timestamp, so most names need no look.
    order.dedup_by(|later, earlier| {
        later.0 == earlier.0 && found[later.1].entry.base() == found[earlier.1].entry.base()
    });
    if found.iter().any(|f| f.digest) {
        // A digest can only collide with a base name chosen to match it;
        // the earlier message keeps the UIDL and the other is left out.
        let mut seen = HashSet::with_capacity(order.len());
        order.retain(|&(_, i)| seen.insert(found[i].uid.as_str()));
    }

    let mut cache = size::load(dirs);
    let mut cache_hits = 0usize;
    let mut learned = false;
    let mut entries = Vec::with_capacity(order.len());
    let mut infos = Vec::with_capacity(order.len());
    let mut unreadable = 0usize;
    let mut unreadable_bases: Vec<Vec<u8>> = Vec::new();
    let mut uncached: Vec<usize> = Vec::new();
    // Names with `W=` are checked against the file's length; names
    // without are measured unless the cache knows them. A reused listing
    // (new/ and cur/ unchanged since it settled) names only files whose
    // `W=` was checked when it was taken, a wrong one's size being in the
    // cache since: checking them again would cost one `fstatat` per
    // message at every login.
    let need: Vec<usize> = order
        .iter()
        .map(|&(_, i)| i)
        .filter(|&i| match found[i].crlf_size {
            Some(_) => !reused,
            None => cache.get(found[i].entry.base()).is_none(),
        })
        .collect();
    cache.rewind();
    // What the cache says of names whose `W=` may turn out wrong: a file
    // whose length contradicts its `W=` is measured once and remembered,
    // not read again at every login (a few hard links to one large file
    // would otherwise cost their length in reading each time).
    let mut fallback: Vec<Option<u64>> = vec![None; found.len()];
    if cache.len() > 0 {
        for &i in &need {
            if found[i].crlf_size.is_some() {
                fallback[i] = cache.get(found[i].entry.base());
            }
        }
        cache.rewind();
    }
    let mut measured: Vec<Option<Result<Option<SizeFound>, StoreError>>> =
        std::iter::repeat_with(|| None).take(found.len()).collect();
    for (i, result) in measure_all(dirs, &found, &need, &fallback) {
        measured[i] = Some(result);
    }
    for &(_, i) in &order {
        let f = &mut found[i];
        let from_cache = match f.crlf_size {
            Some(_) if !reused => None,
            // Without `W=`, or with one the file contradicted when the
            // reused listing was taken.
            _ => cache.get(f.entry.base()),
        };
        let size = match (from_cache, f.crlf_size) {
            (Some(cached), _) => {
                cache_hits += 1;
                uncached.push(entries.len());
                cached
            }
            (None, Some(w)) if reused => w,
            (None, _) => match measured[i]
                .take()
                .unwrap_or_else(|| size_of(dirs, &f.entry, f.crlf_size, fallback[i]))
            {
                Ok(Some(SizeFound { size, from })) => {
                    match from {
                        SizeFrom::Name => {}
                        SizeFrom::Cache => {
                            cache_hits += 1;
                            uncached.push(entries.len());
                        }
                        SizeFrom::File => {
                            learned = true;
                            uncached.push(entries.len());
                        }
                    }
                    size
                }
                // Removed by another program since the listing.
                Ok(None) => continue,
                Err(e) if is_unreadable(&e) => {
                    unreadable += 1;
                    unreadable_bases.push(f.entry.base().to_vec());
                    warn_once(
                        &dirs.path,
                        "messages that cannot be read are left out of the maildrop",
                        &format_args!("{}: {e}", f.entry.path(&dirs.path).display()),
                    );
                    continue;
                }
                Err(e) => return Err(e),
            },
        };
        entries.push(Entry {
            sub: f.entry.sub,
            name: std::mem::take(&mut f.entry.name),
            base_len: f.entry.base_len,
        });
        infos.push(MessageInfo {
            uid: std::mem::take(&mut f.uid),
            size,
        });
    }

    if learned || cache_hits != cache.len() {
        let sizes = uncached.iter().map(|&i| (entries[i].base(), infos[i].size));
        if let Err(e) = size::store(dirs, sizes) {
            warn_once(&dirs.path, "size cache cannot be written", &e);
        }
    }
    Ok(Snapshot {
        entries,
        infos,
        unreadable,
        unreadable_bases,
    })
}

/// A message that the server cannot read, as opposed to a failure that
/// may pass (which fails the open, to be tried again).
fn is_unreadable(e: &StoreError) -> bool {
    match e {
        StoreError::Permanent(_) => true,
        StoreError::Temporary(e) => matches!(
            e.raw_os_error().map(Errno::from_raw),
            Some(Errno::EACCES | Errno::EPERM)
        ),
        _ => false,
    }
}

/// A message's size, and where it was found.
struct SizeFound {
    size: u64,
    from: SizeFrom,
}

/// Where a message's size came from: the size cache keeps the sizes that
/// did not come from the name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SizeFrom {
    /// Its `W=`, which the file's length bears out.
    Name,
    /// The size cache (its `W=` being contradicted by the file's length).
    Cache,
    /// Measured by reading the file.
    File,
}

/// Files measured by one thread before more threads are worth it.
const MEASURE_PER_THREAD: usize = 256;
/// Threads that measure at once: on a cold cache the time goes in waiting
/// for the disk, and several reads in flight overlap those waits.
const MEASURE_THREADS: usize = 8;

/// Sizes the files at `need` (indexes into `found`), in parallel when
/// there are many (the first login to a large Maildir whose names carry
/// no `W=`, and the length checks of `W=` on a large one).
fn measure_all(
    dirs: &Dirs,
    found: &[Found],
    need: &[usize],
    fallback: &[Option<u64>],
) -> Vec<(usize, Result<Option<SizeFound>, StoreError>)> {
    let one = |i: usize| {
        let (entry, crlf) = (&found[i].entry, found[i].crlf_size);
        (i, size_of(dirs, entry, crlf, fallback[i]))
    };
    let threads = (need.len() / MEASURE_PER_THREAD).clamp(1, MEASURE_THREADS);
    if threads == 1 {
        return need.iter().map(|&i| one(i)).collect();
    }
    let chunk = need.len().div_ceil(threads);
    std::thread::scope(|scope| {
        let workers: Vec<_> = need
            .chunks(chunk)
            .map(|part| scope.spawn(move || part.iter().map(|&i| one(i)).collect::<Vec<_>>()))
            .collect();
        workers
            .into_iter()
            // A measuring thread cannot panic on bad input; if one did,
            // its files are simply measured again in the caller's loop.
            .flat_map(|w| w.join().unwrap_or_default())
            .collect()
    })
}

/// Whether a `W=` size can be right for a file of `len` octets: CRLF
/// conversion only adds a CR before each LF, so the CRLF size is at least
/// the length and at most twice it.
fn plausible_crlf_size(crlf: u64, len: u64) -> bool {
    crlf >= len && crlf <= len.saturating_mul(2)
}

/// The CRLF size of one message: its `W=` when the file's length (one
/// `fstatat`) bears it out, else measured by reading the file. `None`
/// when the file has gone.
/// `cached` is what the size cache says, used only when `W=` is wrong.
fn size_of(
    dirs: &Dirs,
    entry: &Entry,
    crlf: Option<u64>,
    cached: Option<u64>,
) -> Result<Option<SizeFound>, StoreError> {
    if let Some(w) = crlf {
        match dirs::file_info(dirs.sub(entry.sub), &entry.name, dirs.euid) {
            Ok(None) => return Ok(None),
            Ok(Some(info)) if info.unreadable => {
                return Err(StoreError::Temporary(Errno::EACCES.into()))
            }
            Ok(Some(info)) if plausible_crlf_size(w, info.len) => {
                return Ok(Some(SizeFound {
                    size: w,
                    from: SizeFrom::Name,
                }))
            }
            Ok(Some(_)) if cached.is_some() => {
                return Ok(cached.map(|size| SizeFound {
                    size,
                    from: SizeFrom::Cache,
                }))
            }
            Ok(Some(_)) => {
                warn_once(
                    &dirs.path,
                    "a W= size that the file's length contradicts is ignored",
                    &entry.path(&dirs.path).display(),
                );
            }
            Err(e) if e.kind() == io::ErrorKind::Other => {
                return Err(not_regular(&entry.path(&dirs.path)))
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(measure(dirs, entry)?.map(|size| SizeFound {
        size,
        from: SizeFrom::File,
    }))
}

/// The CRLF size of a message file, read whole; `None` when it has gone.
fn measure(dirs: &Dirs, entry: &Entry) -> Result<Option<u64>, StoreError> {
    let Some(mut file) = open_regular(dirs.sub(entry.sub), &entry.name, || entry.path(&dirs.path))?
    else {
        return Ok(None);
    };
    Ok(Some(size::file_crlf_size(&mut file)?))
}

/// Opens regular file `name` in `dir` without following a symlink
/// (`O_NOFOLLOW`: a link swapped in for a message is refused by the
/// kernel, with no window between a check and the open). `None` when it
/// does not exist.
fn open_regular(
    dir: BorrowedFd<'_>,
    name: &OsStr,
    path: impl FnOnce() -> PathBuf,
) -> Result<Option<File>, StoreError> {
    Ok(regular_with_len(dirs::open_read(dir, name), path)?.map(|(file, _)| file))
}

/// Flags of every open of a message, beside read-only and close-on-exec:
/// `O_NOFOLLOW` refuses a symlink swapped in for a message, with no window
/// between a check and the open; `O_NONBLOCK` makes a FIFO put in a
/// message's place open at once (and be refused as not a regular file)
/// instead of holding the thread until a writer comes. Reads of regular
/// files ignore it.
const MESSAGE_OPEN_FLAGS: OFlag = OFlag::O_NOFOLLOW.union(OFlag::O_NONBLOCK);

/// Checks what an open found: `None` when nothing was there, an error
/// naming `path` when it was a symlink or anything but a regular file.
fn regular_with_len(
    opened: io::Result<File>,
    path: impl FnOnce() -> PathBuf,
) -> Result<Option<(File, u64)>, StoreError> {
    let file = match opened {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        // A symlink (ELOOP under O_NOFOLLOW), or a socket or device node
        // (ENXIO, ENODEV: nothing to open): not a message, whatever
        // named it (a forged listing can name any file in new/ or cur/).
        Err(e)
            if matches!(
                e.raw_os_error().map(Errno::from_raw),
                Some(Errno::ELOOP | Errno::ENXIO | Errno::ENODEV)
            ) =>
        {
            return Err(not_regular(&path()))
        }
        Err(e) => return Err(e.into()),
    };
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(not_regular(&path()));
    }
    Ok(Some((file, meta.len())))
}

fn not_regular(path: &Path) -> StoreError {
    StoreError::Permanent(format!("{} is not a regular file", path.display()))
}

/// Points every entry at the file that now holds its base name, after
/// another program renamed files (new/ → cur/, flag changes). One listing
/// serves all entries, so a session whose whole maildrop was moved pays
/// for one scan, not one per message. Entries whose base is gone stay as
/// they were, and opening them finds nothing.
fn relocate(dirs: &Dirs, entries: &mut [Entry]) -> io::Result<()> {
    let mut now: HashMap<Vec<u8>, Entry> = HashMap::with_capacity(entries.len());
    // cur/ first: where a message in both is taken to be.
    for sub in [Sub::Cur, Sub::New] {
        for name in dirs::list_files(dirs.sub(sub))? {
            let entry = Entry::new(sub, name);
            now.entry(entry.base().to_vec()).or_insert(entry);
        }
    }
    for entry in entries {
        if let Some(moved) = now.get(entry.base()) {
            entry.clone_from(moved);
        }
    }
    Ok(())
}

/// Runs `op` on entry `i` (`Ok(None)` means its file was not found); when
/// not found and no relocation has happened yet, relocates all entries
/// once and tries again. `Ok(None)` at the end means the message is gone.
fn with_relocation<T>(
    dirs: &Dirs,
    entries: &mut [Entry],
    i: usize,
    relocated: &mut bool,
    op: impl Fn(&Entry) -> io::Result<Option<T>>,
) -> io::Result<Option<T>> {
    if let Some(done) = op(&entries[i])? {
        return Ok(Some(done));
    }
    if std::mem::replace(relocated, true) {
        return Ok(None);
    }
    relocate(dirs, entries)?;
    op(&entries[i])
}

/// Unlinks a message wherever it now is; one already gone is fine.
fn remove(dirs: &Dirs, entry: &Entry) -> io::Result<Option<()>> {
    Ok(dirs::unlink(dirs.sub(entry.sub), &entry.name)?.then_some(()))
}

/// Where a retrieved message goes: into cur/ with the S flag. `None` when
/// it is there already, or its info part is one we must not rewrite.
fn seen_target(entry: &Entry) -> Option<Entry> {
    let name = entry.name.as_bytes();
    if name::parse(name).foreign_info {
        return None;
    }
    let seen = name::seen_name(name);
    if entry.sub == Sub::Cur && seen.is_none() {
        return None;
    }
    let name = seen.map_or_else(|| entry.name.clone(), OsString::from_vec);
    Some(Entry::new(Sub::Cur, name))
}

/// Marks a message seen (RFC 1939 leaves this to us; the Maildir spec says
/// how: cur/ and the S flag), renaming relative to new/ and cur/.
fn mark_seen(dirs: &Dirs, entry: &Entry) -> io::Result<Option<()>> {
    let Some(target) = seen_target(entry) else {
        return Ok(Some(()));
    };
    if !name::is_message_name(target.name.as_bytes()) {
        // Adding ":2,S" would make the name too long: leave it unmarked.
        return Ok(Some(()));
    }
    match nix::fcntl::renameat(
        dirs.sub(entry.sub),
        entry.name.as_os_str(),
        dirs.sub(Sub::Cur),
        target.name.as_os_str(),
    ) {
        Ok(()) => Ok(Some(())),
        Err(Errno::ENOENT) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// What [`MaildirStore::record_uidls`] did with the pairs it was given.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RecordedUidls {
    /// Pairs now recorded.
    pub recorded: usize,
    /// Bases that already had a recorded UIDL (kept as it was).
    pub kept: usize,
    /// Pairs refused: no such message, a UIDL RFC 1939 does not allow, or
    /// one another message has.
    pub refused: usize,
}

fn record_uidls_at(
    at: &Location,
    pairs: &[(Vec<u8>, String)],
) -> Result<RecordedUidls, StoreError> {
    let dirs = Dirs::open(at, false)?
        .ok_or_else(|| StoreError::Permanent("maildir does not exist".into()))?;
    let _lock = lock(&dirs)?;
    let mut present: HashMap<Vec<u8>, String> = HashMap::new();
    for sub in [Sub::Cur, Sub::New] {
        for file in dirs::list_files(dirs.sub(sub))? {
            let base = name::parse(file.as_bytes()).base.to_vec();
            let own = name::uidl(&base);
            present.insert(base, own);
        }
    }
    let recorded = shown::load(&dirs, || present.keys().map(Vec::as_slice).collect())?;
    // A record made here begins now: what is in the Maildir predates it.
    let since = recorded.as_ref().map_or_else(foreign::now, |r| r.since);
    let recorded = recorded.unwrap_or_default();
    let mut taken: HashSet<String> = HashSet::new();
    for (base, own) in &present {
        match recorded.get(base) {
            Some(shown::Decided::Uidl(u)) => taken.insert(u.to_owned()),
            _ => taken.insert(own.clone()),
        };
    }
    let mut out = RecordedUidls::default();
    let mut added: Vec<(&[u8], &str)> = Vec::new();
    let mut added_bases: HashSet<&[u8]> = HashSet::new();
    for (base, uidl) in pairs {
        if recorded.get(base).is_some() || added_bases.contains(base.as_slice()) {
            out.kept += 1;
            continue;
        }
        let Some(own) = present.get(base) else {
            out.refused += 1;
            continue;
        };
        let ok = shown::is_recordable(base)
            && shown::is_uidl(uidl.as_bytes())
            && (uidl == own || !taken.contains(uidl));
        if !ok {
            out.refused += 1;
            continue;
        }
        // The message's own form stays taken: a client may have seen it
        // for this message, so no other message may be given it.
        taken.insert(uidl.clone());
        added.push((base, uidl));
        added_bases.insert(base);
        out.recorded += 1;
    }
    if !added.is_empty() {
        let lines = recorded
            .iter()
            .filter(|(base, _)| present.contains_key(*base))
            .map(|(base, d)| match d {
                shown::Decided::Own => (base, None),
                shown::Decided::Uidl(u) => (base, Some(u)),
            })
            .chain(
                added
                    .iter()
                    .map(|&(b, u)| (b, (name::uidl(b) != u).then_some(u))),
            );
        shown::store(&dirs, since, lines)?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
