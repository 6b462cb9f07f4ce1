//! `mailbag import`: copies one user's mail from a Maildir or an mbox
//! file into the configured store, or from the store out to a Maildir,
//! and checks that the counts and octets on both sides agree.
//!
//! Every message goes through the store's own delivery path, so the
//! copy is as durable as delivered mail. Nothing is deleted on either
//! side: a failed or interrupted import is repaired by removing what it
//! wrote (or by importing into an empty maildrop again).

use std::io::{self, BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use mailbag_proto::dot::{canonical_size, with_lf_line_ends};
use tokio::io::AsyncReadExt;

use crate::store::maildir::{MaildirStore, UidlSources};
use crate::store::mbox::MboxStore;
use crate::store::postgres::cluster::PgClusters;
use crate::store::{maildir, Maildrop, Store, StoreError, Usage};

/// Why an import did not complete.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// The source could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file or directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The target refused a message.
    #[error("store failure after {done}{} messages: {source}", .total.map_or(String::new(), |t| format!(" of {t}")))]
    Store {
        /// Messages copied before the failure.
        done: usize,
        /// Messages in the source, when known before the copy (an mbox
        /// is read as it is copied).
        total: Option<usize>,
        /// Why.
        #[source]
        source: StoreError,
    },
    /// The source failed after some messages were copied: they stay in
    /// the maildrop (with the UIDLs they keep), the rest were not copied.
    #[error("stopped after {done} messages were copied (they stay in the maildrop; the rest were not copied): {source}")]
    Stopped {
        /// Messages copied before the failure.
        done: usize,
        /// Why.
        #[source]
        source: Box<ImportError>,
    },
    /// The counts or octets differ after the copy.
    #[error("verification failed: expected {expected_messages} messages and {expected_octets} octets more, found {found_messages} and {found_octets} (was mail delivered meanwhile?)")]
    Mismatch {
        /// Messages copied.
        expected_messages: u64,
        /// Their octets.
        expected_octets: u64,
        /// What the target gained in messages.
        found_messages: u64,
        /// What it gained in octets.
        found_octets: u64,
    },
}

/// What was copied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Copied {
    /// Messages.
    pub messages: u64,
    /// Their CRLF octets (as POP3 counts them).
    pub octets: u64,
    /// Messages that kept the UIDL they had in the source.
    pub uidls_kept: u64,
}

/// A store that `mailbag import` can give a message the UIDL it had in
/// the source, so that clients that leave mail on the server do not
/// download it again.
pub trait UidlTarget: Store {
    /// A message delivered, whose UIDL is still to be settled by
    /// [`UidlTarget::settle`].
    type Pending: Send;

    /// Delivers `message` to `user`, under `uidl` when the store can
    /// (`Ok((None, true))`), or to be settled at the end.
    fn deliver_keeping(
        &self,
        user: &str,
        message: Vec<u8>,
        uidl: Option<&str>,
    ) -> impl std::future::Future<Output = Result<(Option<Self::Pending>, bool), StoreError>> + Send;

    /// Gives the pending messages their UIDLs; returns how many kept them.
    fn settle(
        &self,
        user: &str,
        pending: Vec<Self::Pending>,
    ) -> impl std::future::Future<Output = Result<u64, StoreError>> + Send;
}

impl UidlTarget for MaildirStore {
    /// The new base name and the UIDL to record for it.
    type Pending = (String, String);

    async fn deliver_keeping(
        &self,
        user: &str,
        message: Vec<u8>,
        uidl: Option<&str>,
    ) -> Result<(Option<(String, String)>, bool), StoreError> {
        let base = MaildirStore::deliver(self, user, message).await?;
        Ok((uidl.map(|u| (base, u.to_owned())), false))
    }

    async fn settle(&self, user: &str, pending: Vec<(String, String)>) -> Result<u64, StoreError> {
        if pending.is_empty() {
            return Ok(0);
        }
        let pairs = pending
            .into_iter()
            .map(|(base, uidl)| (base.into_bytes(), uidl))
            .collect();
        Ok(self.record_uidls(user, pairs).await?.recorded as u64)
    }
}

impl UidlTarget for PgClusters {
    type Pending = ();

    async fn deliver_keeping(
        &self,
        user: &str,
        message: Vec<u8>,
        uidl: Option<&str>,
    ) -> Result<(Option<()>, bool), StoreError> {
        let message = match uidl {
            // A message whose UIDL this maildrop already holds (an import
            // run twice) comes back, to go in under a new one.
            Some(uidl) => match self.deliver_with_uidl(user, message, uidl).await? {
                Ok(()) => return Ok((None, true)),
                Err(message) => message,
            },
            None => message,
        };
        Store::deliver(self, user.into(), message).await?;
        Ok((None, false))
    }

    async fn settle(&self, _user: &str, _pending: Vec<()>) -> Result<u64, StoreError> {
        Ok(0)
    }
}

impl UidlTarget for MboxStore {
    type Pending = ();

    /// An mbox message's UIDL comes from its content (an `X-UIDL:`
    /// header, else its headers), so a source's UIDL is kept only when
    /// the message carries it.
    async fn deliver_keeping(
        &self,
        user: &str,
        message: Vec<u8>,
        _uidl: Option<&str>,
    ) -> Result<(Option<()>, bool), StoreError> {
        MboxStore::deliver(self, user.into(), message).await?;
        Ok((None, false))
    }

    async fn settle(&self, _user: &str, _pending: Vec<()>) -> Result<u64, StoreError> {
        Ok(0)
    }
}

/// The message files of a Maildir (cur/ then new/ and their names, in name
/// order, which is delivery order for the names Maildir writers choose).
/// The Maildir is its owner's: it, its cur/ and new/ are opened without
/// following symlinks, and only regular files are listed (read them with
/// [`read_message`]).
pub fn read_maildir(dir: &Path) -> Result<Vec<PathBuf>, ImportError> {
    let mut files =
        maildir::source::files(dir).map_err(|(path, source)| ImportError::Read { path, source })?;
    files.sort_by(|a, b| a.file_name().cmp(&b.file_name()));
    Ok(files)
}

/// The UIDL each message of the Maildir `dir` has as mailbag would show
/// it with `sources` (see [`maildir::uidls_of`]), for [`into_store`]: by
/// the base name of each file [`read_maildir`] lists.
pub fn maildir_uidls(
    dir: &Path,
    sources: &UidlSources,
) -> Result<impl Fn(&PathBuf) -> Option<String>, ImportError> {
    let uidls = maildir::uidls_of(dir, sources).map_err(|e| ImportError::Read {
        path: dir.to_path_buf(),
        source: match e {
            StoreError::Temporary(e) => e,
            e => io::Error::other(e.to_string()),
        },
    })?;
    Ok(move |file: &PathBuf| {
        use std::os::unix::ffi::OsStrExt;
        let name = file.file_name()?.as_bytes();
        let base = name.split(|&b| b == b':').next()?;
        uidls.get(base).cloned()
    })
}

/// Reads one message file that [`read_maildir`] listed, walking to it
/// again without following a symlink, and only when it is still a
/// regular file (not a symlink or FIFO swapped in since the listing).
pub fn read_message(path: &Path) -> Result<Vec<u8>, ImportError> {
    maildir::source::read(path).map_err(|source| ImportError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// The messages of an mbox file, read as they are copied: only the
/// message being read is in memory, whatever the size of the spool. The
/// file is opened when it is a regular file and not a symlink (the file
/// may be its owner's, who could point a link at someone else's mail)
/// or a FIFO, and read up to the length it had then; a file that turns
/// out shorter (truncated or rewritten while it is read) ends the
/// messages with an error, never as if its messages had all been read,
/// and so does text before the first `From ` line (no mbox, or a
/// damaged one).
pub fn mbox_messages(path: &Path) -> Result<MboxMessages<impl BufRead>, ImportError> {
    let file = open_spool(path).map_err(|source| ImportError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(
        MboxMessages::new(io::BufReader::with_capacity(64 * 1024, file))
            .refusing_text_before_the_first_message(),
    )
}

/// An mbox file opened by [`maildir::source::open_mbox`], read up to the
/// length it had when opened.
/// A file with holes is refused: no mail program writes them, and its
/// length, which costs its owner nothing, would be read as zeros (a
/// terabyte of them, one message to hold in memory).
fn open_spool(path: &Path) -> io::Result<WholeSpool> {
    use nix::unistd::{lseek, Whence};
    use std::os::fd::AsFd;
    let file = maildir::source::open_mbox(path)?;
    let len = file.limit();
    // Where SEEK_HOLE is not supported, the only hole is at the end.
    if let Ok(hole) = lseek(file.get_ref().as_fd(), 0, Whence::SeekHole) {
        if u64::try_from(hole).unwrap_or(0) < len {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "the file has holes (a sparse file): no mail program writes them; \
                 nothing was read",
            ));
        }
        // SEEK_HOLE moved the offset: back to the start.
        lseek(file.get_ref().as_fd(), 0, Whence::SeekSet).map_err(io::Error::from)?;
    }
    Ok(WholeSpool(file))
}

/// A spool read to the length it had when opened: an end of file before
/// that length is an error, so that a spool cut short while an import
/// or an export check reads it is not taken for a whole one.
struct WholeSpool(io::Take<std::fs::File>);

impl io::Read for WholeSpool {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.0.read(buf)?;
        if n == 0 && !buf.is_empty() && self.0.limit() > 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "the file became shorter while it was read ({} octets missing)",
                    self.0.limit()
                ),
            ));
        }
        Ok(n)
    }
}

/// Splits an mbox file held in memory into messages, as [`MboxMessages`]
/// does.
pub fn split_mbox(data: &[u8]) -> Vec<Vec<u8>> {
    // Reading from memory cannot fail.
    MboxMessages::new(data).map_while(Result::ok).collect()
}

/// The messages of an mbox, one at a time: a message starts at a `From `
/// line at the start of the file or after an empty line; mboxrd quoting
/// (`>From `, `>>From `, ...) loses one `>`; the empty line before the
/// next `From ` belongs to the format, not the message. What comes
/// before the first `From ` line is no message.
///
/// A message's lines are read straight into it, and lines that are no
/// part of a message (`From ` lines, text before the first one) are
/// looked at only as far as their first octets: however long a line
/// is, memory holds one message and the reader's buffer, nothing more.
#[derive(Debug)]
pub struct MboxMessages<R> {
    input: R,
    /// The head of a line before the first message.
    head: Vec<u8>,
    /// The message being gathered, once its `From ` line was seen.
    current: Option<Vec<u8>>,
    previous_empty: bool,
    ended: bool,
    /// Lines read before the first message.
    lines_before: u64,
    /// Whether text before the first message, or a `From ` line with
    /// CR-only line ends, is an error.
    refuse_text_before: bool,
}

/// Octets of a line enough to tell a `From ` line and an empty one.
const LINE_HEAD: u64 = 5;

impl<R: BufRead> MboxMessages<R> {
    /// Reads the messages of `input`.
    pub fn new(input: R) -> Self {
        MboxMessages {
            input,
            head: Vec::new(),
            current: None,
            previous_empty: true,
            ended: false,
            lines_before: 0,
            refuse_text_before: false,
        }
    }

    /// Makes a line other than an empty one before the first `From `
    /// line an error (ending the messages before any): a file that is no
    /// mbox (one message, a Maildir file), or one damaged at its start,
    /// is not taken for an mbox of no messages, or of fewer than it has.
    /// So is a `From ` line holding a CR that ends no line: with CR-only
    /// line ends the whole rest of the file is that line.
    pub fn refusing_text_before_the_first_message(mut self) -> Self {
        self.refuse_text_before = true;
        self
    }

    /// Reads the next line, the first [`LINE_HEAD`] octets then the rest,
    /// onto the end of `into`, unless those first octets make it a `From `
    /// line that starts a message (`previous_empty`), or `keep` is false:
    /// then only its head is left in `into` and the rest is skipped.
    /// `None` at the end of the input, else whether it starts a message,
    /// and whether what was skipped of it held a CR that ends no line
    /// with an LF (a file with CR-only line ends is one line).
    fn line(
        input: &mut R,
        into: &mut Vec<u8>,
        previous_empty: bool,
        keep: bool,
    ) -> io::Result<Option<(bool, bool)>> {
        let start = into.len();
        if io::Read::take(&mut *input, LINE_HEAD).read_until(b'\n', into)? == 0 {
            return Ok(None);
        }
        if into.ends_with(b"\n") {
            let from = previous_empty && into[start..].starts_with(b"From ");
            return Ok(Some((from, false)));
        }
        let from = previous_empty && &into[start..] == b"From ";
        if keep && !from {
            input.read_until(b'\n', into)?;
            return Ok(Some((from, false)));
        }
        let bare_cr = skip_line(input)?;
        Ok(Some((from, bare_cr)))
    }
}

/// Consumes input up to and including the next LF, holding none of it;
/// whether it held a CR not followed by that LF or another LF.
fn skip_line(input: &mut impl BufRead) -> io::Result<bool> {
    let mut bare_cr = false;
    let mut after_cr = false;
    loop {
        let buf = match input.fill_buf() {
            Ok(buf) => buf,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if buf.is_empty() {
            return Ok(bare_cr || after_cr);
        }
        let (n, done) = match buf.iter().position(|&b| b == b'\n') {
            Some(lf) => (lf + 1, true),
            None => (buf.len(), false),
        };
        for &b in &buf[..n] {
            bare_cr |= after_cr && b != b'\n';
            after_cr = b == b'\r';
        }
        input.consume(n);
        if done {
            return Ok(bare_cr);
        }
    }
}

impl<R: BufRead> Iterator for MboxMessages<R> {
    type Item = io::Result<Vec<u8>>;

    fn next(&mut self) -> Option<io::Result<Vec<u8>>> {
        if self.ended {
            return None;
        }
        loop {
            let (into, keep) = match self.current.as_mut() {
                Some(message) => (message, true),
                None => {
                    self.head.clear();
                    (&mut self.head, false)
                }
            };
            let start = into.len();
            let (starts_message, bare_cr) =
                match Self::line(&mut self.input, into, self.previous_empty, keep) {
                    Ok(Some(line)) => line,
                    Ok(None) => {
                        self.ended = true;
                        return self.current.take().map(|m| Ok(strip_separator(m)));
                    }
                    Err(e) => {
                        self.ended = true;
                        self.current = None;
                        return Some(Err(e));
                    }
                };
            if starts_message && bare_cr && self.refuse_text_before {
                // The rest of the file went as that `From ` line: it
                // would be one empty message, copied and "verified".
                self.ended = true;
                self.current = None;
                return Some(Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "a \"From \" line holds a CR that ends no line: the file has CR-only \
                     line ends (classic Mac OS), and is no mbox this command reads \
                     (convert them to LF first)",
                )));
            }
            if starts_message {
                into.truncate(start);
                self.previous_empty = false;
                match self.current.replace(Vec::new()) {
                    Some(done) => return Some(Ok(strip_separator(done))),
                    None => continue,
                }
            }
            let line = &into[start..];
            self.previous_empty = line == b"\n" || line == b"\r\n";
            if !keep {
                self.lines_before += 1;
                if self.refuse_text_before && !self.previous_empty {
                    self.ended = true;
                    return Some(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!(
                            "line {} has text before the first \"From \" line: not an mbox \
                             file, or one damaged at its start",
                            self.lines_before
                        ),
                    )));
                }
                continue;
            }
            let quoted = line.iter().take_while(|&&b| b == b'>').count();
            if quoted > 0 && line[quoted..].starts_with(b"From ") {
                into.remove(start);
            }
        }
    }
}

/// Drops the empty line that ends an entry (the separator before the
/// next `From ` line, or at the end of the file), as the mbox store does
/// (`store::mbox::parse`): the whole entry of an empty message is that
/// line.
fn strip_separator(mut message: Vec<u8>) -> Vec<u8> {
    let last_line = message[..message.len().saturating_sub(1)]
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |lf| lf + 1);
    if matches!(&message[last_line..], b"\n" | b"\r\n") {
        message.truncate(last_line);
    }
    message
}

/// A progress bar on standard error, drawn only on a terminal; without
/// a total known in advance, a count.
struct Progress {
    total: Option<usize>,
    started: Instant,
    drawn: Option<Instant>,
    terminal: bool,
}

impl Progress {
    fn new(total: Option<usize>) -> Progress {
        Progress {
            total,
            started: Instant::now(),
            drawn: None,
            terminal: io::stderr().is_terminal(),
        }
    }

    fn update(&mut self, done: usize, octets: u64) {
        let due = self
            .drawn
            .is_none_or(|t| t.elapsed() >= Duration::from_millis(100));
        if !self.terminal || !(due || Some(done) == self.total) {
            return;
        }
        self.draw(done, octets);
    }

    /// Draws the last state and ends the line.
    fn finish(&mut self, done: usize, octets: u64) {
        if self.terminal {
            self.draw(done, octets);
            let _ = writeln!(io::stderr());
        }
    }

    fn draw(&mut self, done: usize, octets: u64) {
        self.drawn = Some(Instant::now());
        const WIDTH: usize = 30;
        let mut err = io::stderr();
        let _ = match self.total {
            Some(total) => {
                let filled = (done * WIDTH)
                    .checked_div(total)
                    .unwrap_or(WIDTH)
                    .min(WIDTH);
                write!(
                    err,
                    "\r[{}{}] {done}/{total} messages",
                    "#".repeat(filled),
                    " ".repeat(WIDTH - filled),
                )
            }
            None => write!(err, "\r{done} messages"),
        };
        let _ = write!(
            err,
            ", {:.1} MB, {:.0?}",
            octets as f64 / 1e6,
            self.started.elapsed()
        );
    }
}

/// Delivers `messages` (read one at a time by `load`) to `user` in
/// `store`, each under the UIDL `uidl` gives it where the store can keep
/// it, then checks the maildrop grew by exactly their count and CRLF
/// octets.
pub async fn into_store<S: UidlTarget, T>(
    store: &S,
    user: &str,
    sources: &[T],
    load: impl Fn(&T) -> Result<Vec<u8>, ImportError>,
    uidl: impl Fn(&T) -> Option<String>,
) -> Result<Copied, ImportError> {
    let messages = sources.iter().map(|source| {
        let message = load(source)?;
        Ok((message, uidl(source)))
    });
    into_store_from(store, user, messages, Some(sources.len())).await
}

/// Delivers each message `messages` yields, with the UIDL to keep for it
/// where the store can, to `user` in `store`, holding one at a time; then
/// checks the maildrop grew by exactly their count and CRLF octets.
/// `total`: how many will come, when known, for the progress bar.
pub async fn into_store_from<S: UidlTarget>(
    store: &S,
    user: &str,
    messages: impl Iterator<Item = Result<(Vec<u8>, Option<String>), ImportError>>,
    total: Option<usize>,
) -> Result<Copied, ImportError> {
    let store_error = |done, source| ImportError::Store {
        done,
        total,
        source,
    };
    let before = store
        .usage(user.into())
        .await
        .map_err(|e| store_error(0, e))?;
    let mut progress = Progress::new(total);
    let mut copied = Copied::default();
    let mut pending = Vec::new();
    progress.update(0, 0);
    let mut stopped = None;
    for next in messages {
        let (message, uidl) = match next {
            Ok(next) => next,
            Err(e) => {
                stopped = Some(e);
                break;
            }
        };
        let octets = store.delivered_size(&message);
        let (settle, kept) = match store.deliver_keeping(user, message, uidl.as_deref()).await {
            Ok(delivered) => delivered,
            Err(e) => {
                stopped = Some(store_error(copied.messages as usize, e));
                break;
            }
        };
        pending.extend(settle);
        copied.messages += 1;
        copied.octets += octets;
        copied.uidls_kept += u64::from(kept);
        progress.update(copied.messages as usize, copied.octets);
    }
    let done = copied.messages as usize;
    progress.finish(done, copied.octets);
    let settled = store.settle(user, pending).await;
    // Those copied before the source or the store failed keep their
    // UIDLs all the same, so that clients do not download them again;
    // the first failure is the one reported.
    if let Some(e) = stopped {
        return Err(match (done, e) {
            (_, e @ ImportError::Store { .. }) | (0, e) => e,
            (_, e) => ImportError::Stopped {
                done,
                source: Box::new(e),
            },
        });
    }
    copied.uidls_kept += settled.map_err(|e| store_error(done, e))?;
    let after = store
        .usage(user.into())
        .await
        .map_err(|e| store_error(done, e))?;
    verify(copied, before, after)?;
    Ok(copied)
}

fn verify(copied: Copied, before: Usage, after: Usage) -> Result<(), ImportError> {
    let found_messages = after.messages.saturating_sub(before.messages);
    let found_octets = after.octets.saturating_sub(before.octets);
    if (found_messages, found_octets) != (copied.messages, copied.octets) {
        return Err(ImportError::Mismatch {
            expected_messages: copied.messages,
            expected_octets: copied.octets,
            found_messages,
            found_octets,
        });
    }
    Ok(())
}

/// Copies every message of `user`'s maildrop in `store` into the Maildir
/// `target` (created if missing; with LF line ends, as mail files have
/// them, when the store keeps CRLF), then checks the Maildir grew by their
/// count and CRLF octets. Holds the maildrop lock meanwhile, and deletes
/// nothing.
pub async fn out_to_maildir<S: UidlTarget>(
    store: &S,
    user: &str,
    target: &Path,
) -> Result<Copied, ImportError> {
    out_of_store(store, user, target, maildir_usage, |message| {
        maildir::deliver(target, &as_mail_file::<S>(message)).map(drop)
    })
    .await
}

/// Appends every message of `user`'s maildrop in `store` to the mbox file
/// `target` (mboxrd quoting, LF line ends as in [`out_to_maildir`];
/// created if missing, synced at the end), then
/// checks the file grew by their count and CRLF octets.
pub async fn out_to_mbox<S: UidlTarget>(
    store: &S,
    user: &str,
    target: &Path,
) -> Result<Copied, ImportError> {
    let mut file: Option<std::fs::File> = None;
    let copied = out_of_store(store, user, target, mbox_usage, |message| {
        let file = match &mut file {
            Some(file) => file,
            None => file.insert(open_mbox_for_append(target)?),
        };
        file.write_all(&mbox_entry(&as_mail_file::<S>(message)))
    });
    // The closure borrows `file` until the copy is done.
    let copied = copied.await;
    if let Some(file) = file {
        file.sync_all().map_err(|source| ImportError::Read {
            path: target.to_path_buf(),
            source,
        })?;
    }
    copied
}

/// A message read out of a store of kind `S`, as a mail file holds it.
fn as_mail_file<S: UidlTarget>(message: Vec<u8>) -> Vec<u8> {
    if S::KEEPS_CRLF {
        with_lf_line_ends(&message)
    } else {
        message
    }
}

/// Opens (or creates, mode 0600) an mbox file to append to: never through
/// a symlink in its place (a file in a user's directory may be a link,
/// planted by that user, to someone else's mail, which this command could
/// write), never waiting on a FIFO, and only a regular file.
fn open_mbox_for_append(target: &Path) -> io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let refused = || io::Error::other(format!("{} is not a regular file", target.display()));
    let file = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
        .open(target)
        .map_err(|e| match e.raw_os_error() {
            Some(nix::libc::ELOOP | nix::libc::ENXIO) => refused(),
            _ => e,
        })?;
    if !file.metadata()?.is_file() {
        return Err(refused());
    }
    Ok(file)
}

/// The copy loop of [`out_to_maildir`] and [`out_to_mbox`]. `write` runs
/// inline: this is a command-line tool, and each message has been read
/// whole before it is written.
async fn out_of_store<S: Store>(
    store: &S,
    user: &str,
    target: &Path,
    measure: fn(&Path) -> io::Result<Usage>,
    mut write: impl FnMut(Vec<u8>) -> io::Result<()>,
) -> Result<Copied, ImportError> {
    let read_error = |source| ImportError::Read {
        path: target.to_path_buf(),
        source,
    };
    let before = measure(target).map_err(read_error)?;
    let mut maildrop = crate::store::open_waiting(store, user.into())
        .await
        .map_err(|source| ImportError::Store {
            done: 0,
            total: None,
            source,
        })?;
    let total = maildrop.messages().len();
    let mut progress = Progress::new(Some(total));
    let mut copied = Copied::default();
    progress.update(0, 0);
    for index in 0..total {
        let store_error = |source| ImportError::Store {
            done: index,
            total: Some(total),
            source,
        };
        let mut reader = maildrop.read(index).await.map_err(store_error)?;
        let mut message = Vec::new();
        reader
            .read_to_end(&mut message)
            .await
            .map_err(|e| store_error(StoreError::Temporary(e)))?;
        let octets = canonical_size(&message);
        write(message).map_err(read_error)?;
        copied.messages += 1;
        copied.octets += octets;
        progress.update(index + 1, copied.octets);
    }
    progress.finish(total, copied.octets);
    // Released unchanged and waited for, so that the maildrop is free
    // when this command returns (see `mailbox::run_with`).
    maildrop
        .commit(&[], &[])
        .await
        .map_err(|source| ImportError::Store {
            done: total,
            total: Some(total),
            source,
        })?;
    let after = measure(target).map_err(read_error)?;
    verify(copied, before, after)?;
    Ok(copied)
}

/// One mbox entry: a `From ` line, the message with mboxrd quoting (one
/// more `>` before any `>*From ` line), a final newline if it lacks one,
/// and the empty separator line.
pub(crate) fn mbox_entry(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + 64);
    out.extend_from_slice(b"From MAILER-DAEMON ");
    out.extend_from_slice(asctime_now().as_bytes());
    out.push(b'\n');
    for line in message.split_inclusive(|&b| b == b'\n') {
        let quoted = line.iter().take_while(|&&b| b == b'>').count();
        if line[quoted..].starts_with(b"From ") {
            out.push(b'>');
        }
        out.extend_from_slice(line);
    }
    // A message that does not end a line gets the line end its canonical
    // form has: after a CR, that is CRLF (the CR stays data), so that its
    // POP3 size stays what it was.
    if out.ends_with(b"\r") {
        out.extend_from_slice(b"\r\n");
    } else if !out.ends_with(b"\n") {
        out.push(b'\n');
    }
    out.push(b'\n');
    out
}

/// The current UTC time as mbox `From ` lines write it (`asctime`).
fn asctime_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let days = (secs / 86_400) as i64;
    let rest = secs % 86_400;
    // Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    format!(
        "{} {} {day:>2} {:02}:{:02}:{:02} {year}",
        DAYS[days.rem_euclid(7) as usize],
        MONTHS[(month - 1) as usize],
        rest / 3600,
        rest / 60 % 60,
        rest % 60
    )
}

/// Messages and CRLF octets of an mbox file, read a message at a time; a
/// missing file holds none.
fn mbox_usage(path: &Path) -> io::Result<Usage> {
    let file = match open_spool(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Usage::default()),
        Err(e) => return Err(e),
    };
    let mut usage = Usage::default();
    for message in MboxMessages::new(io::BufReader::with_capacity(64 * 1024, file)) {
        usage.messages += 1;
        usage.octets += canonical_size(&message?);
    }
    Ok(usage)
}

/// Messages and CRLF octets of a Maildir, measured from the files.
fn maildir_usage(dir: &Path) -> io::Result<Usage> {
    let mut usage = Usage::default();
    let files = match read_maildir(dir) {
        Ok(files) => files,
        Err(ImportError::Read { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
            return Ok(usage)
        }
        Err(ImportError::Read { source, .. }) => return Err(source),
        Err(e) => return Err(io::Error::other(e.to_string())),
    };
    for file in files {
        usage.messages += 1;
        usage.octets += canonical_size(&maildir::source::read(&file)?);
    }
    Ok(usage)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `import --to mbox:` writes reads back, by this command's
    /// verify and by the mbox store alike, as messages of the sizes
    /// copied: empty messages, messages of empty lines, a final bare CR,
    /// no final line end, `From ` lines quoted or not, CRLF ends.
    #[test]
    fn mbox_entries_read_back_at_their_canonical_sizes() {
        let mut seed = 0x6d62_6f78_u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let pieces: [&[u8]; 9] = [
            b"\n", b"\r", b"\r\n", b"From ", b">", b"a", b".", b"\0", b"\xff",
        ];
        let fixed: [&[u8]; 9] = [
            b"",
            b"\n",
            b"\r\n",
            b"\r",
            b"x\r",
            b"x",
            b"\n\r\n",
            b"From x\r",
            b">From \n\n",
        ];
        let mut batches: Vec<Vec<Vec<u8>>> = vec![fixed.iter().map(|m| m.to_vec()).collect()];
        for _ in 0..300 {
            let batch = (0..1 + next() % 4)
                .map(|_| {
                    (0..next() % 12)
                        .flat_map(|_| pieces[(next() % 9) as usize].to_vec())
                        .collect()
                })
                .collect();
            batches.push(batch);
        }
        for batch in batches {
            let mbox: Vec<u8> = batch.iter().flat_map(|m| mbox_entry(m)).collect();
            let read = split_mbox(&mbox);
            let sizes: Vec<u64> = batch.iter().map(|m| canonical_size(m)).collect();
            let read_sizes: Vec<u64> = read.iter().map(|m| canonical_size(m)).collect();
            assert_eq!(read_sizes, sizes, "{batch:?}");
            for (got, sent) in read.iter().zip(&batch) {
                assert_eq!(
                    mailbag_proto::dot::canonicalize(got),
                    mailbag_proto::dot::canonicalize(sent)
                );
            }
            let (entries, junk) = crate::store::mbox::parse::parse(&mbox);
            assert_eq!(junk, 0);
            // The store shows `>From ` lines as stored: one octet more
            // for each line quoted.
            let quoted = |m: &[u8]| {
                m.split_inclusive(|&b| b == b'\n')
                    .filter(|l| {
                        let q = l.iter().take_while(|&&b| b == b'>').count();
                        l[q..].starts_with(b"From ")
                    })
                    .count() as u64
            };
            let store_sizes: Vec<u64> = entries.iter().map(|e| e.size).collect();
            let shown: Vec<u64> = batch
                .iter()
                .map(|m| canonical_size(m) + quoted(m))
                .collect();
            assert_eq!(store_sizes, shown, "{batch:?}");
        }
        // A file written elsewhere, whose separators end in CRLF after a
        // line that ends in LF: the same messages as the store shows.
        let mbox = b"From a\nx\n\r\nFrom b\n\r\nFrom c\ny\r\n\n";
        assert_eq!(split_mbox(mbox), [&b"x\n"[..], b"", b"y\r\n"]);
        let sizes: Vec<u64> = crate::store::mbox::parse::parse(mbox)
            .0
            .iter()
            .map(|e| e.size)
            .collect();
        assert_eq!(sizes, [3, 0, 3]);
    }

    /// An mbox entry, and what is left of it as a message.
    const ENTRY: &[u8] = b"From a@b Mon Jan  1 00:00:00 2024\nSubject: s\n\n>From here\n\n";
    const MESSAGE: &[u8] = b"Subject: s\n\nFrom here\n";

    /// A spool without end, counting what was read of it; after `fail_at`
    /// octets every read fails.
    struct Endless {
        read: usize,
        fail_at: usize,
    }

    impl std::io::Read for Endless {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.read >= self.fail_at {
                return Err(io::Error::other("the disk went away"));
            }
            let pos = self.read % ENTRY.len();
            let n = buf.len().min(ENTRY.len() - pos);
            buf[..n].copy_from_slice(&ENTRY[pos..pos + n]);
            self.read += n;
            Ok(n)
        }
    }

    /// An mbox is split as it is read: the first messages of a spool come
    /// out having read little more than them, whatever follows (here a
    /// spool without end, which reading whole never finishes).
    #[test]
    fn mbox_messages_are_read_one_at_a_time() {
        let mut spool = Endless {
            read: 0,
            fail_at: usize::MAX,
        };
        let got: Vec<Vec<u8>> = MboxMessages::new(io::BufReader::with_capacity(4096, &mut spool))
            .take(3)
            .collect::<io::Result<_>>()
            .unwrap();
        assert_eq!(got, vec![MESSAGE.to_vec(); 3]);
        assert!(
            spool.read <= 4096 + 4 * ENTRY.len(),
            "{} octets read for three messages",
            spool.read
        );
    }

    /// A read that fails ends the messages with its error, after those
    /// read whole before it.
    #[test]
    fn a_failed_read_ends_the_mbox_messages_with_its_error() {
        let spool = Endless {
            read: 0,
            // Past the third entry's `From ` line, which ends the second.
            fail_at: 2 * ENTRY.len() + 40,
        };
        let mut messages = MboxMessages::new(io::BufReader::with_capacity(16, spool));
        assert_eq!(messages.next().unwrap().unwrap(), MESSAGE);
        assert_eq!(messages.next().unwrap().unwrap(), MESSAGE);
        let e = messages.next().unwrap().unwrap_err();
        assert_eq!(e.to_string(), "the disk went away");
        assert!(messages.next().is_none());
    }

    #[test]
    fn mbox_splits_on_from_lines_after_empty_lines_and_unquotes_mboxrd() {
        let mbox = b"From a@b Mon Jan  1 00:00:00 2024\nSubject: one\n\n>From the start\n>>From deeper\nFrom inside (no empty line before)\n\nFrom c@d Tue Jan  2 00:00:00 2024\nSubject: two\n\nbody\n";
        let messages = split_mbox(mbox);
        assert_eq!(messages.len(), 2);
        assert_eq!(
            messages[0],
            b"Subject: one\n\nFrom the start\n>From deeper\nFrom inside (no empty line before)\n"
        );
        assert_eq!(messages[1], b"Subject: two\n\nbody\n");
        assert!(split_mbox(b"").is_empty());
    }

    #[tokio::test]
    async fn maildir_into_a_store_and_back_out_keeps_every_octet() {
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("src");
        let bodies: [&[u8]; 3] = [
            b"Subject: a\n\nx\n",
            b"Subject: b\r\n\r\ny",
            b"\0binary\xff\n",
        ];
        for body in bodies {
            maildir::deliver(&source, body).unwrap();
        }
        let store = maildir::MaildirStore::new(
            dir.path().join("root"),
            "{root}/{user}".into(),
            "localhost".into(),
        );
        let files = read_maildir(&source).unwrap();
        let copied = into_store(
            &store,
            "u",
            &files,
            |p| {
                std::fs::read(p).map_err(|source| ImportError::Read {
                    path: p.clone(),
                    source,
                })
            },
            |_| None,
        )
        .await
        .unwrap();
        let octets: u64 = bodies.iter().map(|b| canonical_size(b)).sum();
        assert_eq!(
            copied,
            Copied {
                messages: 3,
                octets,
                uidls_kept: 0,
            }
        );
        let back = dir.path().join("back");
        let out = out_to_maildir(&store, "u", &back).await.unwrap();
        assert_eq!(out, copied);

        let mut got: Vec<Vec<u8>> = read_maildir(&back)
            .unwrap()
            .iter()
            .map(|p| std::fs::read(p).unwrap())
            .collect();
        let mut want: Vec<Vec<u8>> = bodies.iter().map(|b| b.to_vec()).collect();
        got.sort();
        want.sort();
        assert_eq!(got, want);

        let mbox = dir.path().join("mbox");
        std::fs::write(&mbox, b"").unwrap();
        let out = out_to_mbox(&store, "u", &mbox).await.unwrap();
        assert_eq!(out, copied);
        let mut got = split_mbox(&std::fs::read(&mbox).unwrap());
        got.sort();
        // The one message without a final newline gains one, as POP3
        // would send it.
        let mut want: Vec<Vec<u8>> = vec![
            bodies[0].to_vec(),
            b"Subject: b\r\n\r\ny\n".to_vec(),
            bodies[2].to_vec(),
        ];
        want.sort();
        assert_eq!(got, want);
    }

    /// A Maildir that Dovecot served, imported into a Maildir store:
    /// every message keeps the UIDL Dovecot showed (and one Dovecot never
    /// listed keeps mailbag's own form), recorded before any session.
    #[tokio::test]
    async fn maildir_import_keeps_the_uidls_dovecot_showed() {
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("old/Maildir");
        for sub in ["new", "cur", "tmp"] {
            std::fs::create_dir_all(source.join(sub)).unwrap();
        }
        let names = [
            "1700000001.a.host",
            "1700000002.b.host",
            "1700000003.c.host",
        ];
        for (i, name) in names.iter().enumerate() {
            std::fs::write(
                source.join("cur").join(format!("{name}:2,S")),
                format!("m{i}\n"),
            )
            .unwrap();
        }
        std::fs::write(
            source.join("dovecot-uidlist"),
            format!(
                "3 V1700000000 N3\n1 :{}\n2 PKEPT-2 :{}\n",
                names[0], names[1]
            ),
        )
        .unwrap();
        let sources = UidlSources {
            dovecot: Some(maildir::DovecotUidlFormat::parse("%08Xu%08Xv").unwrap()),
            ..UidlSources::default()
        };
        let store = maildir::MaildirStore::new(
            dir.path().join("root"),
            "{root}/{user}".into(),
            "localhost".into(),
        );
        let files = read_maildir(&source).unwrap();
        let uidl = maildir_uidls(&source, &sources).unwrap();
        let copied = into_store(&store, "u", &files, |p| read_message(p), uidl)
            .await
            .unwrap();
        assert_eq!((copied.messages, copied.uidls_kept), (3, 3));
        let maildrop = store.open("u".into()).await.unwrap();
        let mut got: Vec<String> = maildrop.messages().iter().map(|m| m.uid.clone()).collect();
        got.sort();
        assert_eq!(got, ["000000016553f100", "1700000003.c.host", "KEPT-2"]);
        // The source is only read.
        assert!(!source.join("mailbag.uidls").exists());
    }

    /// The whole-file splitter the streaming one replaced, kept as the
    /// reference it must agree with.
    fn split_whole(data: &[u8]) -> Vec<Vec<u8>> {
        let mut messages: Vec<Vec<u8>> = Vec::new();
        let mut current: Option<Vec<u8>> = None;
        let mut previous_empty = true;
        for line in data.split_inclusive(|&b| b == b'\n') {
            if previous_empty && line.starts_with(b"From ") {
                if let Some(done) = current.take() {
                    messages.push(strip_separator(done));
                }
                current = Some(Vec::new());
                previous_empty = false;
                continue;
            }
            previous_empty = line == b"\n" || line == b"\r\n";
            let Some(message) = current.as_mut() else {
                continue;
            };
            let quoted = line.iter().take_while(|&&b| b == b'>').count();
            if quoted > 0 && line[quoted..].starts_with(b"From ") {
                message.extend_from_slice(&line[1..]);
            } else {
                message.extend_from_slice(line);
            }
        }
        if let Some(done) = current {
            messages.push(strip_separator(done));
        }
        messages
    }

    /// Hostile spools (CR-only line ends, NUL, `From` lines cut short,
    /// quoting at the end of the file, text before the first message,
    /// nothing at all), and pseudo-random ones built of the same pieces,
    /// split as they are read through buffers of every small size (so
    /// every line head falls across a buffer boundary) give the same
    /// messages as the whole-file splitter.
    #[test]
    fn streaming_agrees_with_the_whole_file_splitter_at_every_buffer_size() {
        let mut spools: Vec<Vec<u8>> = [
            &b""[..],
            b"\n",
            b"From ",
            b"From",
            b"From \n",
            b"From x",
            b"preamble\nFrom a\nbody\n",
            b"preamble\n\nFrom a\nbody\n",
            b"From a\r\nS: 1\r\n\r\nFrom b\r\n>From c\r\n\r\n",
            b"From a\rS: cr only\r\rFrom b\r",
            b"From a\n\0\0\n\nFrom \0\n\0From x\n",
            b"From a\n\n>From",
            b"From a\n\n>From ",
            b"From a\n\n>>>From x\n>>>From",
            b"From a\nx\n\nFrom b\n\n\nFrom c\n",
            b"From a\n\n\n",
            b"From a\n\r\n",
            b"From a\nFrom b\n\nFromage\n\nFrom  c\n",
        ]
        .iter()
        .map(|s| s.to_vec())
        .collect();
        let pieces: [&[u8]; 12] = [
            b"From a@b x\n",
            b"\n",
            b"\r\n",
            b">From q\n",
            b">>From ",
            b"From",
            b" ",
            b"body line\n",
            b"\r",
            b"\0",
            b"Fro",
            b"m \n",
        ];
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        for _ in 0..300 {
            let mut spool = Vec::new();
            for _ in 0..24 {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                spool.extend_from_slice(pieces[(seed % pieces.len() as u64) as usize]);
            }
            spools.push(spool);
        }
        for spool in &spools {
            let want = split_whole(spool);
            assert_eq!(
                split_mbox(spool),
                want,
                "{:?}",
                String::from_utf8_lossy(spool)
            );
            for capacity in (1..=13).chain([64 * 1024]) {
                let got: Vec<Vec<u8>> =
                    MboxMessages::new(io::BufReader::with_capacity(capacity, &spool[..]))
                        .collect::<io::Result<_>>()
                        .unwrap();
                assert_eq!(
                    got,
                    want,
                    "capacity {capacity}: {:?}",
                    String::from_utf8_lossy(spool)
                );
            }
        }
    }

    /// A file with CR-only line ends is one line: when it starts with
    /// `From `, all of it would be that line and the import would copy
    /// one empty message and call it verified. The import's reader
    /// refuses it, wherever the CRs fall against the buffer; CRLF line
    /// ends are an mbox as before.
    #[test]
    fn cr_only_line_ends_are_refused_and_crlf_ones_are_not() {
        let cr_only = b"From a@b x\rSubject: one\r\rbody\r\rFrom c@d y\rSubject: two\r";
        let crlf = b"From a@b x\r\nSubject: one\r\n\r\nbody\r\n\r\nFrom c@d y\r\nSubject: two\r\n";
        for capacity in (1..=13).chain([64 * 1024]) {
            let read = |data: &'static [u8]| {
                MboxMessages::new(io::BufReader::with_capacity(capacity, data))
                    .refusing_text_before_the_first_message()
                    .collect::<Vec<_>>()
            };
            let got = read(cr_only);
            assert_eq!(got.len(), 1, "capacity {capacity}");
            let e = got[0].as_ref().unwrap_err();
            assert!(
                e.to_string().contains("CR-only"),
                "capacity {capacity}: {e}"
            );
            let got: Vec<Vec<u8>> = read(crlf).into_iter().collect::<io::Result<_>>().unwrap();
            assert_eq!(got, split_whole(crlf), "capacity {capacity}");
            assert_eq!(got.len(), 2);
        }
    }

    /// A line of many megabytes that is no part of a message (text
    /// before the first `From ` line, a `From ` line itself) is skipped
    /// as it is read, never held; a message's own long line is read
    /// straight into the message, not into a second buffer as well.
    #[test]
    fn long_lines_outside_messages_are_skipped_not_held() {
        use std::io::Read;
        const LONG: u64 = 16 << 20;
        let spool = io::repeat(b'p')
            .take(LONG)
            .chain(&b"\n\nFrom "[..])
            .chain(io::repeat(b'f').take(LONG))
            .chain(&b"\nSubject: a\n\nbody\n\nFrom "[..])
            .chain(io::repeat(b'g').take(LONG))
            .chain(&b"\nSubject: b\n\n"[..])
            .chain(io::repeat(b'x').take(LONG));
        let mut messages = MboxMessages::new(io::BufReader::with_capacity(64 * 1024, spool));
        let first = messages.next().unwrap().unwrap();
        assert!(first == b"Subject: a\n\nbody\n", "{} octets", first.len());
        assert!(first.capacity() < 1024, "{}", first.capacity());
        let second = messages.next().unwrap().unwrap();
        assert!(second.starts_with(b"Subject: b\n\nxxx"));
        assert_eq!(second.len() as u64, 12 + LONG);
        assert!(second.capacity() as u64 <= 2 * (12 + LONG));
        assert!(messages.next().is_none());
        assert!(
            messages.head.capacity() < 1024,
            "{} octets kept of lines outside messages",
            messages.head.capacity()
        );
    }

    /// A spool truncated while it is read (its owner, or a program
    /// rewriting it) ends the messages with an error: the import never
    /// takes the messages read so far for the whole spool.
    #[test]
    fn a_spool_cut_short_while_it_is_read_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("inbox");
        let body = vec![b'b'; 100 * 1024];
        let mut spool = Vec::new();
        for i in 0..3 {
            spool.extend_from_slice(format!("From a@b {i}\nSubject: {i}\n\n").as_bytes());
            spool.extend_from_slice(&body);
            spool.extend_from_slice(b"\n\n");
        }
        std::fs::write(&path, &spool).unwrap();
        let mut messages = mbox_messages(&path).unwrap();
        assert!(messages
            .next()
            .unwrap()
            .unwrap()
            .starts_with(b"Subject: 0\n"));
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(spool.len() as u64 / 2)
            .unwrap();
        let rest: Vec<io::Result<Vec<u8>>> = messages.collect();
        let e = rest.last().unwrap().as_ref().unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof, "{e}");
        assert!(e.to_string().contains("shorter"), "{e}");
        // The export check counts the same way.
        assert!(mbox_usage(&path).is_ok());
    }

    /// A spool with holes (a terabyte of them behind one `From ` line,
    /// which costs its owner no disk) is refused when opened, by the
    /// import and by the export check alike, before anything is read.
    #[test]
    fn a_sparse_spool_is_refused_before_it_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("inbox");
        std::fs::write(&path, b"From a@b\nSubject: s\n\n").unwrap();
        let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        file.set_len(1 << 40).unwrap();
        drop(file);
        let e = mbox_messages(&path)
            .err()
            .expect("a sparse spool was opened");
        assert!(e.to_string().contains("holes"), "{e}");
        let e = mbox_usage(&path).unwrap_err();
        assert!(e.to_string().contains("holes"), "{e}");
    }

    /// When the source fails after some messages were copied, the error
    /// says how many stay in the maildrop, and those keep the UIDLs they
    /// came with (recorded as at the end of a whole import), so clients
    /// do not download them again.
    #[tokio::test]
    async fn a_source_failing_midway_says_what_was_copied_and_keeps_its_uidls() {
        let dir = tempfile::tempdir().unwrap();
        let store = maildir::MaildirStore::new(
            dir.path().join("root"),
            "{root}/{user}".into(),
            "localhost".into(),
        );
        let messages = vec![
            Ok((b"Subject: 1\n\none\n".to_vec(), Some("KEPT-1".to_string()))),
            Ok((b"Subject: 2\n\ntwo\n".to_vec(), Some("KEPT-2".to_string()))),
            Err(ImportError::Read {
                path: "inbox".into(),
                source: io::Error::other("the disk went away"),
            }),
            Ok((b"Subject: 3\n\nthree\n".to_vec(), None)),
        ];
        let e = into_store_from(&store, "u", messages.into_iter(), None)
            .await
            .unwrap_err();
        assert!(matches!(e, ImportError::Stopped { done: 2, .. }), "{e:?}");
        let text = e.to_string();
        assert!(
            text.contains("after 2 messages") && text.contains("the disk went away"),
            "{text}"
        );
        let maildrop = store.open("u".into()).await.unwrap();
        let mut got: Vec<String> = maildrop.messages().iter().map(|m| m.uid.clone()).collect();
        got.sort();
        assert_eq!(got, ["KEPT-1", "KEPT-2"]);
    }

    /// When the store refuses a message midway (its Maildir broken, the
    /// disk full), those copied before it keep the UIDLs they came with
    /// (they used to get new ones, so clients downloaded them again), and
    /// the error is the store's, saying how many were copied.
    #[tokio::test]
    async fn a_store_failing_midway_keeps_the_uidls_of_what_was_copied() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        let store =
            maildir::MaildirStore::new(root.clone(), "{root}/{user}".into(), "localhost".into());
        let tmp = root.join("u/tmp");
        let messages = (1..=3).map(|i| {
            if i == 3 {
                // Deliveries write into tmp/ first: a file there now
                // makes the third one fail.
                std::fs::remove_dir_all(&tmp).unwrap();
                std::fs::write(&tmp, b"").unwrap();
            }
            Ok((
                format!("Subject: {i}\n\nbody\n").into_bytes(),
                Some(format!("KEPT-{i}")),
            ))
        });
        let e = into_store_from(&store, "u", messages, None)
            .await
            .unwrap_err();
        assert!(matches!(e, ImportError::Store { done: 2, .. }), "{e:?}");
        assert!(e.to_string().contains("after 2 messages"), "{e}");
        std::fs::remove_file(&tmp).unwrap();
        std::fs::create_dir(&tmp).unwrap();
        let maildrop = store.open("u".into()).await.unwrap();
        let mut got: Vec<String> = maildrop.messages().iter().map(|m| m.uid.clone()).collect();
        got.sort();
        assert_eq!(got, ["KEPT-1", "KEPT-2"]);
    }

    #[test]
    fn mbox_entries_quote_from_lines_and_split_back() {
        let message = b"Subject: q\n\nFrom me\n>From you\nplain\n";
        let entry = mbox_entry(message);
        assert!(entry.starts_with(b"From MAILER-DAEMON "));
        assert!(
            entry.ends_with(b"\n>From me\n>>From you\nplain\n\n"),
            "{}",
            String::from_utf8_lossy(&entry)
        );
        assert_eq!(
            split_mbox(&[entry.clone(), entry].concat()),
            vec![message.to_vec(); 2]
        );
        let date = asctime_now();
        assert_eq!(date.len(), 24, "{date}");
    }
}
