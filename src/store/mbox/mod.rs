//! The mbox backend of [`Store`]: one mbox spool file per user, as the
//! classic Unix mail host keeps them (`/var/mail/<user>`, written by
//! Postfix `local(8)`, procmail or mutt).
//!
//! - **Where.** A path template (default `/var/mail/%u`) whose last
//!   component holds `%u`, the user name, which the project's one name rule
//!   (`auth::name`) keeps to one path component. The spool directory is the
//!   administrator's (opened as configured, with `O_DIRECTORY`); every file
//!   in it is opened through that descriptor with `O_NOFOLLOW | O_NONBLOCK`
//!   and must be a regular file (a symlink, FIFO or device is `[SYS/PERM]`).
//!   A missing spool is an empty maildrop.
//! - **Locks** (`lock.rs`): a session lock of mailbag's own beside the
//!   spool for the whole session (`[IN-USE]`), and the locks the MTA
//!   knows (dotlock and `fcntl`, as configured) only while the snapshot is
//!   read and while UPDATE rewrites the file, so deliveries during a
//!   session wait for moments, not for the session.
//! - **Snapshot.** The file is read once at open, in large chunks, by the
//!   parser (`parse.rs`); the messages are then read from their offsets.
//!   The MTA only appends, so the snapshot's octets stay where they were.
//! - **What a client sees.** A message's stored octets between its `From_`
//!   line and the empty line before the next one (as Dovecot shows them),
//!   `>From ` lines as stored; sizes in CRLF octets.
//! - **UIDLs.** A message's `X-UIDL:` where qpopper or Dovecot left one;
//!   otherwise a digest of its `From_` line and headers (leaving out those
//!   mail readers rewrite, such as `Status:`), so a message's UIDL depends
//!   on nothing else in the file and survives the deletion of others.
//!   Equal values get `-2`, `-3`, ... in file order.
//! - **UPDATE** (`update.rs`): kept messages, and everything appended since
//!   the snapshot, rewritten in place behind a journal, crash-safe.
//!   `Status:` and `X-Status:` headers are left alone (no message is
//!   rewritten; a retrieved message is not marked read).

mod lock;
pub mod parse;
mod quarantine;
mod update;

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use nix::fcntl::OFlag;
use nix::sys::stat::Mode;

pub use lock::LockOptions;
use lock::{MtaLocks, SessionLock};
pub use quarantine::{check_quarantine_dir, MboxAdmin, MboxQuarantined, Released};
use update::{Piece, Stop};

use super::{Mailbox, Maildrop, MessageBody, MessageInfo, Store, StoreError, Usage};

/// The default spool path template.
pub const DEFAULT_PATH: &str = "/var/mail/%u";
/// What the files beside a spool end in (`lock.rs`, `update.rs`).
const SIDE_FILES: &[&str] = &[
    ".lock",
    ".mailbag",
    ".mailbag-journal",
    ".mailbag-journal.new",
];
/// The most messages a session takes into its snapshot (a listing of a
/// million costs about 150 MB of memory); the rest of a larger spool is
/// left where it is, as if delivered after the snapshot, and served once
/// earlier messages are deleted.
const MAX_MESSAGES: usize = 1_000_000;
/// Messages up to this size are read into memory in one go.
const IN_MEMORY: u64 = 256 * 1024;
/// Read buffer of the snapshot parse.
const CHUNK: usize = 1 << 20;

/// mbox spools in one directory, one per user.
#[derive(Debug, Clone)]
pub struct MboxStore {
    dir: PathBuf,
    /// The last component, with `%u` in it.
    file: String,
    locks: LockOptions,
    /// `store.mbox.quarantine_dir` (`quarantine.rs`).
    quarantine: Option<PathBuf>,
}

impl MboxStore {
    /// `template` is a path whose last component holds `%u` (and no other
    /// `%` but `%%`), e.g. `/var/mail/%u`.
    pub fn new(template: &str, locks: LockOptions) -> Result<MboxStore, String> {
        check_template(template)?;
        let path = Path::new(template);
        let dir = path.parent().unwrap_or(Path::new("/")).to_path_buf();
        let file = path
            .file_name()
            .and_then(OsStr::to_str)
            .unwrap_or_default()
            .to_string();
        Ok(MboxStore {
            dir,
            file,
            locks,
            quarantine: None,
        })
    }

    /// Where `mailbag mailbox quarantine` keeps messages (see
    /// `quarantine.rs`); `None`: quarantine is refused.
    pub fn with_quarantine(mut self, dir: Option<PathBuf>) -> MboxStore {
        self.quarantine = dir;
        self
    }

    /// The spool directory and the spool's file name for `user`.
    fn spool(&self, user: &str) -> Result<(PathBuf, OsString), StoreError> {
        crate::auth::name::check(user)
            .map_err(|e| StoreError::Permanent(format!("user name refused: {}", e.why)))?;
        let name = expand(&self.file, user);
        // The files beside a spool are named after it: a user whose spool
        // would be another user's dotlock, session lock or journal (a user
        // `alice.lock` beside `alice`) is refused.
        if SIDE_FILES.iter().any(|suffix| name.ends_with(suffix)) {
            return Err(StoreError::Permanent(format!(
                "user name refused: the spool name would end in one of {}",
                SIDE_FILES.join(", ")
            )));
        }
        Ok((self.dir.clone(), OsString::from(name)))
    }

    /// The spool directory and file name of `mailbox`: the template's,
    /// or the file name the user's entry gives, in the spool directory
    /// (one component only, by the rules of
    /// [`check_maildrop`](crate::store::check_maildrop) and the side-file
    /// rule; a path of directories is refused, never mapped elsewhere).
    fn spool_of(&self, mailbox: Mailbox<'_>) -> Result<(PathBuf, OsString), StoreError> {
        let Some(maildrop) = mailbox.maildrop else {
            return self.spool(mailbox.name);
        };
        let parts = crate::store::check_maildrop(maildrop)?;
        let [name] = parts[..] else {
            return Err(StoreError::Permanent(
                "maildrop from the user's entry refused: an mbox store takes one file name \
                 in its spool directory"
                    .into(),
            ));
        };
        if SIDE_FILES.iter().any(|suffix| name.ends_with(suffix)) {
            return Err(StoreError::Permanent(format!(
                "maildrop from the user's entry refused: the spool name would end in one of {}",
                SIDE_FILES.join(", ")
            )));
        }
        Ok((self.dir.clone(), OsString::from(name)))
    }

    /// The spool file of `user`, for messages and tools.
    pub fn spool_path(&self, user: &str) -> Result<PathBuf, StoreError> {
        let (dir, name) = self.spool(user)?;
        Ok(dir.join(name))
    }

    /// The size a message delivered by [`Store::deliver`] has in the
    /// spool: `From ` lines in it are quoted with `>`.
    pub fn stored_size(message: &[u8]) -> u64 {
        let entry = crate::admin::import::mbox_entry(message);
        let (entries, _) = parse::parse(&entry);
        entries.first().map_or(0, |e| e.size)
    }
}

/// Checks a spool path template: absolute, `%u` in its last component
/// only, no other `%` escape but `%%`.
pub fn check_template(template: &str) -> Result<(), String> {
    let path = Path::new(template);
    if !path.is_absolute() {
        return Err("must be an absolute path, e.g. /var/mail/%u".into());
    }
    let Some(last) = path.file_name().and_then(OsStr::to_str) else {
        return Err("must end in a file name with %u, e.g. /var/mail/%u".into());
    };
    if !last.contains("%u") {
        return Err("the file name (last component) must contain %u, e.g. /var/mail/%u".into());
    }
    if path
        .parent()
        .is_some_and(|p| p.to_string_lossy().contains('%'))
    {
        return Err("only the file name may hold % escapes".into());
    }
    let mut rest = last;
    while let Some(i) = rest.find('%') {
        match rest.as_bytes().get(i + 1) {
            Some(b'u' | b'%') => rest = &rest[i + 2..],
            _ => return Err("unknown % escape: use %u (user name) or %%".into()),
        }
    }
    Ok(())
}

fn expand(file: &str, user: &str) -> String {
    let mut out = String::new();
    let mut rest = file;
    while let Some(i) = rest.find('%') {
        out.push_str(&rest[..i]);
        match rest.as_bytes().get(i + 1) {
            Some(b'u') => out.push_str(user),
            _ => out.push('%'),
        }
        rest = &rest[(i + 2).min(rest.len())..];
    }
    out.push_str(rest);
    out
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

/// Opens the spool directory.
fn open_dir(dir: &Path) -> Result<OwnedFd, StoreError> {
    nix::fcntl::open(
        dir,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| match e {
        nix::errno::Errno::ENOENT | nix::errno::Errno::ENOTDIR => StoreError::Permanent(format!(
            "mbox spool directory {} does not exist",
            dir.display()
        )),
        e => StoreError::Temporary(io::Error::from(e)),
    })
}

/// Opens the spool for reading and writing: `None` when missing.
fn open_spool(dir: &OwnedFd, name: &OsStr) -> Result<Option<File>, StoreError> {
    let file = lock::open_regular(dir.as_fd(), name, OFlag::O_RDWR, 0).map_err(|e| match e {
        StoreError::Temporary(e) if e.kind() == io::ErrorKind::PermissionDenied => {
            StoreError::Permanent(format!(
                "cannot read and write the spool {}: give the server's user access \
                 (see docs/DEPLOYMENT.md, \"Serving /var/mail\")",
                String::from_utf8_lossy(name.as_bytes())
            ))
        }
        e => e,
    })?;
    if let Some(file) = &file {
        lock::single_name(file, name)?;
    }
    Ok(file)
}

/// Whether `name` in `dir` is still the file `file` (not replaced by
/// another program while we waited for the locks).
fn still_named(dir: &OwnedFd, name: &OsStr, file: &File) -> Result<bool, StoreError> {
    let meta = file.metadata()?;
    match nix::sys::stat::fstatat(dir.as_fd(), name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(st.st_ino == meta.ino() && st.st_dev == meta.dev()),
        Err(nix::errno::Errno::ENOENT) => Ok(false),
        Err(e) => Err(io::Error::from(e).into()),
    }
}

/// Parses the first `len` octets of `file`.
fn parse_file(file: &File, len: u64) -> io::Result<(Vec<parse::Entry>, u64)> {
    parse_file_within(file, len, usize::MAX).map(|(entries, junk, _)| (entries, junk))
}

/// Parses `file` up to `len`, or up to the start of message `max + 1`:
/// the messages, the octets before the first one, and where parsing
/// stopped (the length of the snapshot). Holes in a sparse file are not
/// read (they are zeros, parsed in constant time), so the time a login
/// takes is bounded by the data the spool really holds, not by a length
/// its owner can set at will.
fn parse_file_within(
    file: &File,
    len: u64,
    max: usize,
) -> io::Result<(Vec<parse::Entry>, u64, u64)> {
    use nix::errno::Errno;
    use nix::unistd::{lseek, Whence};
    let offset = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
    let mut p = parse::Parser::new();
    let mut buf = vec![0u8; CHUNK.min(len as usize).max(1)];
    let mut at = 0;
    while at < len {
        let data = match lseek(file.as_fd(), offset(at), Whence::SeekData) {
            Ok(d) => u64::try_from(d).unwrap_or(at).clamp(at, len),
            // Nothing but a hole up to the end.
            Err(Errno::ENXIO) => len,
            // No hole support: all of it is data.
            Err(_) => at,
        };
        p.feed_zeros(data - at);
        at = data;
        let data_end = match lseek(file.as_fd(), offset(at), Whence::SeekHole) {
            Ok(h) => u64::try_from(h).unwrap_or(len).clamp(at, len),
            Err(_) => len,
        };
        let data_end = if data_end == at { len } else { data_end };
        while at < data_end {
            let want = ((data_end - at) as usize).min(buf.len());
            let n = file.read_at(&mut buf[..want], at)?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the spool shrank while it was read",
                ));
            }
            p.feed(&buf[..n]);
            at += n as u64;
            if let Some(next) = p.entries().get(max) {
                let stop = next.from;
                let (mut entries, junk) = p.finish();
                entries.truncate(max);
                return Ok((entries, junk, stop));
            }
        }
    }
    let (mut entries, junk) = p.finish();
    match entries.get(max) {
        Some(next) => {
            let stop = next.from;
            entries.truncate(max);
            Ok((entries, junk, stop))
        }
        None => Ok((entries, junk, len)),
    }
}

/// Opens the spool under the MTA locks (retrying if another program
/// replaces the file meanwhile), finishes an interrupted UPDATE, and runs
/// `f` on the file while the locks are held. `None` when there is no spool.
fn with_locked_spool<T>(
    dir: &OwnedFd,
    name: &OsStr,
    options: &LockOptions,
    session: bool,
    f: impl FnOnce(&File) -> Result<T, StoreError>,
) -> Result<Option<(File, T)>, StoreError> {
    for _ in 0..3 {
        let Some(file) = open_spool(dir, name)? else {
            return Ok(None);
        };
        let locks = MtaLocks::take(dir.as_fd(), name, Some(&file), options, session)?;
        if !still_named(dir, name, &file)? {
            locks.release();
            continue;
        }
        if session && update::recover(dir.as_fd(), name, &file)? {
            tracing::info!(
                spool = %String::from_utf8_lossy(name.as_bytes()),
                "finished an interrupted UPDATE"
            );
        }
        let out = f(&file);
        locks.release();
        return out.map(|out| Some((file, out)));
    }
    Err(StoreError::Temporary(io::Error::other(
        "the spool keeps being replaced by another program",
    )))
}

/// A message of the snapshot.
#[derive(Debug, Clone)]
struct Place {
    /// Its `From_` line: the message with its separator is `from..next`.
    from: u64,
    start: u64,
    end: u64,
}

/// A user's mbox spool, locked for one POP3 session.
#[derive(Debug)]
pub struct MboxMaildrop {
    _session: SessionLock,
    dir: Arc<OwnedFd>,
    name: OsString,
    locks: LockOptions,
    /// The spool as opened at the snapshot (None: there was none).
    file: Option<Arc<File>>,
    /// The snapshot's length of the file.
    len: u64,
    /// Octets before the first `From_` line (kept as they are).
    junk: u64,
    places: Vec<Place>,
    /// The parser's entries, to check the file is as snapshotted at UPDATE.
    entries: Vec<parse::Entry>,
    infos: Vec<MessageInfo>,
    /// Where UPDATE stops, as a crash would (tests only).
    stop: Stop,
}

impl MboxMaildrop {
    fn open(dir_path: &Path, name: OsString, locks: LockOptions) -> Result<Self, StoreError> {
        MboxMaildrop::open_within(dir_path, name, locks, MAX_MESSAGES)
    }

    fn open_within(
        dir_path: &Path,
        name: OsString,
        locks: LockOptions,
        max: usize,
    ) -> Result<Self, StoreError> {
        let dir = open_dir(dir_path)?;
        let session = lock::session(dir.as_fd(), &name)?;
        let snap = with_locked_spool(&dir, &name, &locks, true, |file| {
            let len = file.metadata()?.len();
            let (entries, junk, len) = parse_file_within(file, len, max)?;
            Ok((len, entries, junk))
        })?;
        let (file, len, entries, junk) = match snap {
            Some((file, (len, entries, junk))) => (Some(Arc::new(file)), len, entries, junk),
            None => (None, 0, Vec::new(), 0),
        };
        let uidls = parse::uidls(&entries);
        let infos = entries
            .iter()
            .zip(uidls)
            .map(|(e, uid)| MessageInfo { uid, size: e.size })
            .collect();
        let places = entries
            .iter()
            .map(|e| Place {
                from: e.from,
                start: e.start,
                end: e.end,
            })
            .collect();
        Ok(MboxMaildrop {
            _session: session,
            dir: Arc::new(dir),
            name,
            locks,
            file,
            len,
            junk,
            places,
            entries,
            infos,
            stop: Stop::Never,
        })
    }

    fn commit_blocking(self, deleted: &[usize]) -> Result<(), StoreError> {
        self.rewrite_without(deleted, |_| Ok(()))
    }

    /// UPDATE's rewrite: the spool without the messages `deleted`, and
    /// with whatever was appended since the snapshot. `before` runs first,
    /// under the MTA locks, once the spool is known to hold the snapshot
    /// unchanged (the quarantine copies a message there); its failure
    /// leaves the spool untouched.
    fn rewrite_without(
        &self,
        deleted: &[usize],
        before: impl FnOnce(&File) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let n = self.places.len();
        let mut is_deleted = vec![false; n];
        for &i in deleted {
            *is_deleted
                .get_mut(i)
                .ok_or_else(|| StoreError::Permanent("message index out of range".into()))? = true;
        }
        let Some(file) = &self.file else {
            return Ok(());
        };
        if !is_deleted.contains(&true) {
            return Ok(());
        }
        let dir = self.dir.as_fd();
        let locks = MtaLocks::take(dir, &self.name, Some(file), &self.locks, true)?;
        if !still_named(&self.dir, &self.name, file)? {
            return Err(StoreError::Temporary(io::Error::other(
                "the spool was replaced during the session; nothing was deleted",
            )));
        }
        let now = file.metadata()?.len();
        let unchanged = now >= self.len && parse_file(file, self.len)?.0 == self.entries;
        if !unchanged {
            return Err(StoreError::Temporary(io::Error::other(
                "the spool was rewritten by another program during the session; nothing was deleted",
            )));
        }
        before(file)?;
        let mut pieces = Vec::with_capacity(n + 2);
        if self.junk > 0 {
            pieces.push(Piece::Spool(0..self.junk));
        }
        for (i, p) in self.places.iter().enumerate() {
            if !is_deleted[i] {
                let next = self.places.get(i + 1).map_or(self.len, |q| q.from);
                match pieces.last_mut() {
                    Some(Piece::Spool(r)) if r.end == p.from => r.end = next,
                    _ => pieces.push(Piece::Spool(p.from..next)),
                }
            }
        }
        // Delivered during the session: kept as it is.
        if now > self.len {
            match pieces.last_mut() {
                Some(Piece::Spool(r)) if r.end == self.len => r.end = now,
                _ => pieces.push(Piece::Spool(self.len..now)),
            }
        }
        update::rewrite(dir, &self.name, file, &pieces, self.stop)?;
        locks.release();
        Ok(())
    }
}

/// A message's octets as stored.
pub enum MboxReader {
    /// A small message, read whole.
    Memory(io::Cursor<Vec<u8>>),
    /// A large one, streamed from its offset.
    File(tokio::io::Take<tokio::fs::File>),
}

impl std::fmt::Debug for MboxReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MboxReader")
    }
}

impl tokio::io::AsyncRead for MboxReader {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        match self.get_mut() {
            MboxReader::Memory(c) => std::pin::Pin::new(c).poll_read(cx, buf),
            MboxReader::File(f) => std::pin::Pin::new(f).poll_read(cx, buf),
        }
    }
}

impl MessageBody for MboxReader {
    fn in_memory(&self) -> Option<&[u8]> {
        match self {
            MboxReader::Memory(c) => Some(c.get_ref()),
            MboxReader::File(_) => None,
        }
    }
}

impl Maildrop for MboxMaildrop {
    type Reader = MboxReader;

    fn messages(&self) -> &[MessageInfo] {
        &self.infos
    }

    fn unreadable(&self) -> usize {
        usize::from(self.junk > 0)
    }

    async fn read(&mut self, index: usize) -> Result<MboxReader, StoreError> {
        let (Some(place), Some(file)) = (self.places.get(index), &self.file) else {
            return Err(StoreError::Permanent("message index out of range".into()));
        };
        let (start, len) = (place.start, place.end - place.start);
        if len <= IN_MEMORY {
            let file = Arc::clone(file);
            let data = blocking(move || {
                let mut data = vec![0u8; len as usize];
                file.read_exact_at(&mut data, start)?;
                Ok(data)
            })
            .await?;
            return Ok(MboxReader::Memory(io::Cursor::new(data)));
        }
        use tokio::io::{AsyncReadExt, AsyncSeekExt};
        let mut f = tokio::fs::File::from_std(file.try_clone()?);
        f.seek(io::SeekFrom::Start(start)).await?;
        Ok(MboxReader::File(f.take(len)))
    }

    async fn commit(self, deleted: &[usize], _retrieved: &[usize]) -> Result<(), StoreError> {
        let deleted = deleted.to_vec();
        blocking(move || self.commit_blocking(&deleted)).await
    }
}

impl Store for MboxStore {
    type Maildrop = MboxMaildrop;

    async fn open(&self, user: Mailbox<'_>) -> Result<MboxMaildrop, StoreError> {
        let (dir, name) = self.spool_of(user)?;
        let locks = self.locks.clone();
        blocking(move || MboxMaildrop::open(&dir, name, locks)).await
    }

    /// Appends `message` to the spool under the MTA locks, as an MTA
    /// would: a `From ` line, the message with its `From ` lines quoted,
    /// an empty line. On failure the spool is cut back to its length
    /// before. Returns the message's UIDL.
    async fn deliver(&self, user: Mailbox<'_>, message: Vec<u8>) -> Result<String, StoreError> {
        let (dir, name) = self.spool_of(user)?;
        let locks = self.locks.clone();
        blocking(move || deliver(&dir, &name, &locks, &message)).await
    }

    fn delivered_size(&self, message: &[u8]) -> u64 {
        MboxStore::stored_size(message)
    }

    async fn usage(&self, user: Mailbox<'_>) -> Result<Usage, StoreError> {
        let (dir, name) = self.spool_of(user)?;
        blocking(move || {
            let dir = open_dir(&dir)?;
            let Some(file) = lock::open_regular(dir.as_fd(), &name, OFlag::O_RDONLY, 0)? else {
                return Ok(Usage::default());
            };
            lock::single_name(&file, &name)?;
            let len = file.metadata()?.len();
            let (entries, _) = parse_file(&file, len)?;
            Ok(Usage {
                messages: entries.len() as u64,
                octets: entries.iter().map(|e| e.size).sum(),
            })
        })
        .await
    }
}

fn deliver(
    dir: &Path,
    name: &OsStr,
    options: &LockOptions,
    message: &[u8],
) -> Result<String, StoreError> {
    let dir = open_dir(dir)?;
    let file = lock::open_regular(dir.as_fd(), name, OFlag::O_RDWR | OFlag::O_CREAT, 0o600)?
        .ok_or_else(|| StoreError::Permanent("spool vanished".into()))?;
    lock::single_name(&file, name)?;
    let locks = MtaLocks::take(dir.as_fd(), name, Some(&file), options, false)?;
    if !still_named(&dir, name, &file)? {
        return Err(StoreError::Temporary(io::Error::other(
            "the spool was replaced while it was locked",
        )));
    }
    let len = file.metadata()?.len();
    // The new `From ` line must follow an empty line.
    let mut tail = [0u8; 2];
    let have = len.min(2) as usize;
    file.read_exact_at(&mut tail[..have], len - have as u64)?;
    let mut entry = match (len, &tail[..have]) {
        (0, _) | (_, b"\n\n") => Vec::new(),
        (_, [.., b'\n']) => b"\n".to_vec(),
        _ => b"\n\n".to_vec(),
    };
    let quoted = crate::admin::import::mbox_entry(message);
    entry.extend_from_slice(&quoted);
    let written = file
        .write_all_at(&entry, len)
        .and_then(|()| file.sync_data());
    if let Err(e) = written {
        let _ = file.set_len(len).and_then(|()| file.sync_data());
        return Err(e.into());
    }
    locks.release();
    let (entries, _) = parse::parse(&quoted);
    Ok(parse::uidls(&entries).pop().unwrap_or_default())
}

#[cfg(test)]
mod tests;
