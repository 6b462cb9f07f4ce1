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
//! All filesystem work runs in `spawn_blocking`; file names and the size
//! cache are untrusted input and never cause a panic.

mod deliver;
mod listing;
mod name;
mod quarantine;
mod size;
mod usage;

use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::fs::{File, OpenOptions, TryLockError};
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Component, Path, PathBuf};

use nix::fcntl::OFlag;
use nix::sys::stat::Mode;

pub use deliver::deliver;
pub use quarantine::{AdminMaildrop, Quarantined, FOLDER as QUARANTINE_FOLDER};

use super::{Maildrop, MessageBody, MessageInfo, Store, StoreError, Usage};

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
        }
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

    /// Delivers `message` durably into `user`'s Maildir (see [`deliver`])
    /// and returns its base name.
    pub async fn deliver(&self, user: &str, message: Vec<u8>) -> Result<String, StoreError> {
        let maildir = self.maildir_path(user)?;
        blocking(move || Ok(deliver(&maildir, &message)?)).await
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

impl Store for MaildirStore {
    type Maildrop = MaildirMaildrop;

    async fn open(&self, user: &str) -> Result<MaildirMaildrop, StoreError> {
        let maildir = self.maildir_path(user)?;
        blocking(move || MaildirMaildrop::open(maildir)).await
    }

    async fn deliver(&self, user: &str, message: Vec<u8>) -> Result<String, StoreError> {
        MaildirStore::deliver(self, user, message).await
    }

    async fn usage(&self, user: &str) -> Result<Usage, StoreError> {
        let maildir = self.maildir_path(user)?;
        blocking(move || Ok(usage::usage(&maildir)?)).await
    }
}

/// Which of the two message directories a file is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sub {
    New,
    Cur,
}

impl Sub {
    fn dir(self) -> &'static str {
        match self {
            Sub::New => "new",
            Sub::Cur => "cur",
        }
    }
}

/// Where one message of the snapshot currently is.
#[derive(Debug, Clone)]
struct Entry {
    sub: Sub,
    /// The full file name, flags included.
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

    fn path(&self, maildir: &Path) -> PathBuf {
        maildir.join(self.sub.dir()).join(&self.name)
    }
}

/// A user's Maildir, locked for one POP3 session, with the snapshot taken
/// at open. Dropping it releases the lock and deletes nothing.
#[derive(Debug)]
pub struct MaildirMaildrop {
    /// Held only for its `flock`: closing the descriptor unlocks.
    _lock: File,
    maildir: PathBuf,
    /// The Maildir directory, opened at the session's first read of a
    /// small message: those open relative to it (`openat`), without a walk
    /// of the whole path and a path built for each. Sessions that never
    /// read hold no descriptor for it.
    dir: Option<OwnedFd>,
    /// Scratch for `cur/<name>`, reused from read to read.
    relative: Vec<u8>,
    entries: Vec<Entry>,
    infos: Vec<MessageInfo>,
}

impl MaildirMaildrop {
    fn open(maildir: PathBuf) -> Result<Self, StoreError> {
        deliver::create_maildir(&maildir)?;
        let lock = lock(&maildir)?;
        let (entries, infos) = snapshot(&maildir)?;
        Ok(MaildirMaildrop {
            _lock: lock,
            maildir,
            dir: None,
            relative: Vec::new(),
            entries,
            infos,
        })
    }

    fn commit_blocking(mut self, deleted: &[usize], retrieved: &[usize]) -> Result<(), StoreError> {
        if deleted.is_empty() && retrieved.is_empty() {
            // Nothing changes: no directory needs an fsync (most polling
            // sessions end this way).
            return Ok(());
        }
        let maildir = self.maildir.clone();
        let mut first: Option<StoreError> = None;
        let mut note = |e: StoreError| {
            tracing::warn!(error = %e, maildir = %maildir.display(), "maildrop commit");
            first.get_or_insert(e);
        };
        let n = self.entries.len();
        let mut is_deleted = vec![false; n];
        let mut is_retrieved = vec![false; n];
        for (indices, marks) in [(deleted, &mut is_deleted), (retrieved, &mut is_retrieved)] {
            for &i in indices {
                match marks.get_mut(i) {
                    Some(mark) => *mark = true,
                    None => note(StoreError::Permanent("message index out of range".into())),
                }
            }
        }
        let mut relocated = false;
        for i in 0..n {
            let result = if is_deleted[i] {
                with_relocation(&maildir, &mut self.entries, i, &mut relocated, |e| {
                    remove(&maildir, e)
                })
            } else if is_retrieved[i] {
                with_relocation(&maildir, &mut self.entries, i, &mut relocated, |e| {
                    mark_seen(&maildir, e)
                })
            } else {
                continue;
            };
            // Not found even after relocation: gone, which is fine for both.
            if let Err(e) = result {
                note(e.into());
            }
        }
        for sub in [Sub::New, Sub::Cur] {
            if let Err(e) = deliver::sync_dir(&maildir.join(sub.dir())) {
                note(e.into());
            }
        }
        // The lock goes with `self` here, after the directories are synced.
        drop(self);
        first.map_or(Ok(()), Err)
    }
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

/// Opens a message file for [`MessageReader`]; `None` when it has gone.
fn open_message(path: &Path) -> Result<Option<MessageReader>, StoreError> {
    reader_for(open_flagged(path), || path.to_path_buf())
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

impl MaildirMaildrop {
    /// Opens message `index` relative to the Maildir's directory and
    /// reads it as [`open_message`] would.
    fn open_small(&mut self, index: usize) -> Result<Option<MessageReader>, StoreError> {
        let dir = match &mut self.dir {
            Some(dir) => dir,
            empty => empty.insert(
                nix::fcntl::openat(
                    nix::fcntl::AT_FDCWD,
                    self.maildir.as_path(),
                    OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
                    Mode::empty(),
                )
                .map_err(io::Error::from)?,
            ),
        };
        let entry = &self.entries[index];
        self.relative.clear();
        self.relative.extend_from_slice(entry.sub.dir().as_bytes());
        self.relative.push(b'/');
        self.relative.extend_from_slice(entry.name.as_bytes());
        let opened = nix::fcntl::openat(
            &*dir,
            &self.relative[..],
            OFlag::O_RDONLY | OFlag::O_CLOEXEC | MESSAGE_OPEN_FLAGS,
            Mode::empty(),
        )
        .map(File::from)
        .map_err(io::Error::from);
        reader_for(opened, || entry.path(&self.maildir))
    }
}

impl Maildrop for MaildirMaildrop {
    type Reader = MessageReader;

    fn messages(&self) -> &[MessageInfo] {
        &self.infos
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
        // A small message is opened and read right here: from the page
        // cache that takes microseconds, less than the trip to the
        // blocking pool would. Larger ones go to the pool.
        let found = if small {
            self.open_small(index)?
        } else {
            let path = entry.path(&self.maildir);
            blocking(move || open_message(&path)).await?
        };
        if let Some(reader) = found {
            return Ok(reader);
        }
        let maildir = self.maildir.clone();
        let mut entries = self.entries.clone();
        let (entries, reader) = blocking(move || {
            relocate(&maildir, &mut entries)?;
            let reader = open_message(&entries[index].path(&maildir))?;
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
fn lock(maildir: &Path) -> Result<File, StoreError> {
    let path = maildir.join(LOCK_FILE);
    match path.symlink_metadata() {
        Ok(meta) if !meta.file_type().is_file() => {
            return Err(StoreError::Permanent(format!(
                "{} is not a regular file",
                path.display()
            )));
        }
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e.into()),
        _ => {}
    }
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)?;
    match file.try_lock() {
        Ok(()) => Ok(file),
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
/// directories.
fn list(maildir: &Path) -> io::Result<Vec<Found>> {
    let stamp = listing::Stamp::read(maildir)?;
    if let Some(names) = listing::load(maildir, stamp) {
        let mut found = Vec::with_capacity(names.len());
        for (in_cur, name) in names {
            let sub = if in_cur { Sub::Cur } else { Sub::New };
            found.push(found_from(sub, OsString::from_vec(name)));
        }
        return Ok(found);
    }
    let listed = listing::listing_time();
    let found = scan(maildir)?;
    listing::store(
        maildir,
        stamp,
        listed,
        found
            .iter()
            .map(|f| (f.entry.sub == Sub::Cur, listing::bytes(&f.entry.name))),
    );
    Ok(found)
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
fn scan(maildir: &Path) -> io::Result<Vec<Found>> {
    let mut found: Vec<Found> = Vec::new();
    for sub in [Sub::Cur, Sub::New] {
        for dirent in std::fs::read_dir(maildir.join(sub.dir()))? {
            let dirent = dirent?;
            let name = dirent.file_name();
            if name.as_bytes().first().is_none_or(|&b| b == b'.') {
                continue;
            }
            // d_type from readdir: no stat per file on common filesystems.
            match dirent.file_type() {
                Ok(t) if t.is_file() => {}
                Ok(_) => continue,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            }
            // Everything derived from the name is computed here, while the
            // name is hot in cache: later passes visit names in sorted order,
            // which is random order in memory.
            found.push(found_from(sub, name));
        }
    }
    Ok(found)
}

/// Lists the Maildir, orders it, makes UIDLs unique and sizes every
/// message: from `W=`, else the size cache, else by reading the file (and
/// then the cache learns it).
fn snapshot(maildir: &Path) -> Result<(Vec<Entry>, Vec<MessageInfo>), StoreError> {
    let mut found = list(maildir)?;
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

    let mut cache = size::load(maildir);
    let mut cache_hits = 0usize;
    let mut learned = false;
    let mut entries = Vec::with_capacity(order.len());
    let mut infos = Vec::with_capacity(order.len());
    let mut uncached: Vec<usize> = Vec::new();
    let need: Vec<usize> = order
        .iter()
        .map(|&(_, i)| i)
        .filter(|&i| found[i].crlf_size.is_none() && cache.get(found[i].entry.base()).is_none())
        .collect();
    let mut measured = measure_all(maildir, &found, &need);
    for &(_, i) in &order {
        let f = &mut found[i];
        let size = match f.crlf_size {
            Some(w) => w,
            None => match cache.get(f.entry.base()) {
                Some(cached) => {
                    cache_hits += 1;
                    uncached.push(entries.len());
                    cached
                }
                None => match measured
                    .remove(&i)
                    .unwrap_or_else(|| measure(&f.entry.path(maildir)))?
                {
                    Some(n) => {
                        learned = true;
                        uncached.push(entries.len());
                        n
                    }
                    // Removed by another program since the listing.
                    None => continue,
                },
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
        if let Err(e) = size::store(maildir, sizes) {
            tracing::warn!(error = %e, maildir = %maildir.display(), "cannot write size cache");
        }
    }
    Ok((entries, infos))
}

/// Files measured by one thread before more threads are worth it.
const MEASURE_PER_THREAD: usize = 256;
/// Threads that measure at once: on a cold cache the time goes in waiting
/// for the disk, and several reads in flight overlap those waits.
const MEASURE_THREADS: usize = 8;

/// Measures the files at `need` (indexes into `found`), in parallel when
/// there are many (the first login to a large Maildir whose names carry
/// no `W=`).
fn measure_all(
    maildir: &Path,
    found: &[Found],
    need: &[usize],
) -> HashMap<usize, Result<Option<u64>, StoreError>> {
    let threads = (need.len() / MEASURE_PER_THREAD).clamp(1, MEASURE_THREADS);
    if threads == 1 {
        return need
            .iter()
            .map(|&i| (i, measure(&found[i].entry.path(maildir))))
            .collect();
    }
    let chunk = need.len().div_ceil(threads);
    std::thread::scope(|scope| {
        let workers: Vec<_> = need
            .chunks(chunk)
            .map(|part| {
                scope.spawn(move || {
                    part.iter()
                        .map(|&i| (i, measure(&found[i].entry.path(maildir))))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        workers
            .into_iter()
            // A measuring thread cannot panic on bad input; if one did,
            // its files are simply measured again in the caller's loop.
            .flat_map(|w| w.join().unwrap_or_default())
            .collect()
    })
}

/// The CRLF size of a message file; `None` when it has gone.
fn measure(path: &Path) -> Result<Option<u64>, StoreError> {
    let Some(mut file) = open_regular(path)? else {
        return Ok(None);
    };
    Ok(Some(size::file_crlf_size(&mut file)?))
}

/// Opens a regular file without following a symlink (`O_NOFOLLOW`: a
/// link swapped in for a message is refused by the kernel, with no window
/// between a check and the open). `None` when the path does not exist.
fn open_regular(path: &Path) -> Result<Option<File>, StoreError> {
    Ok(open_regular_with_len(path)?.map(|(file, _)| file))
}

/// [`open_regular`], with the file's length from the same `fstat`.
fn open_regular_with_len(path: &Path) -> Result<Option<(File, u64)>, StoreError> {
    regular_with_len(open_flagged(path), || path.to_path_buf())
}

/// Flags of every open of a message, beside read-only and close-on-exec:
/// `O_NOFOLLOW` refuses a symlink swapped in for a message, with no window
/// between a check and the open; `O_NONBLOCK` makes a FIFO put in a
/// message's place open at once (and be refused as not a regular file)
/// instead of holding the thread until a writer comes. Reads of regular
/// files ignore it.
const MESSAGE_OPEN_FLAGS: OFlag = OFlag::O_NOFOLLOW.union(OFlag::O_NONBLOCK);

fn open_flagged(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(MESSAGE_OPEN_FLAGS.bits())
        .open(path)
}

/// Checks what an open found: `None` when nothing was there, an error
/// naming `path` when it was a symlink or anything but a regular file.
fn regular_with_len(
    opened: io::Result<File>,
    path: impl FnOnce() -> PathBuf,
) -> Result<Option<(File, u64)>, StoreError> {
    let file = match opened {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) if e.raw_os_error() == Some(nix::errno::Errno::ELOOP as i32) => {
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
fn relocate(maildir: &Path, entries: &mut [Entry]) -> io::Result<()> {
    let mut now: HashMap<Vec<u8>, Entry> = HashMap::with_capacity(entries.len());
    // cur/ first: where a message in both is taken to be.
    for sub in [Sub::Cur, Sub::New] {
        for dirent in std::fs::read_dir(maildir.join(sub.dir()))? {
            let dirent = dirent?;
            let name = dirent.file_name();
            if name.as_bytes().first().is_none_or(|&b| b == b'.')
                || !dirent.file_type().is_ok_and(|t| t.is_file())
            {
                continue;
            }
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
    maildir: &Path,
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
    relocate(maildir, entries)?;
    op(&entries[i])
}

fn not_found_is_none<T>(result: io::Result<T>) -> io::Result<Option<T>> {
    match result {
        Ok(done) => Ok(Some(done)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Unlinks a message wherever it now is; one already gone is fine.
fn remove(maildir: &Path, entry: &Entry) -> io::Result<Option<()>> {
    not_found_is_none(std::fs::remove_file(entry.path(maildir)))
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
/// how: cur/ and the S flag).
fn mark_seen(maildir: &Path, entry: &Entry) -> io::Result<Option<()>> {
    match seen_target(entry) {
        None => Ok(Some(())),
        Some(target) => {
            not_found_is_none(std::fs::rename(entry.path(maildir), target.path(maildir)))
        }
    }
}

#[cfg(test)]
mod tests;
