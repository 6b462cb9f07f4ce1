//! The LMTP driver (RFC 2033): the listeners an MTA delivers through (TCP
//! and a Unix socket), and one task per connection that drives the sans-IO
//! core [`mailbag_proto::lmtp::Conn`] against the passdb and the store.
//!
//! The core answers; this module performs its two effects. RCPT asks the
//! passdb whether the address names a user (and the store whether that
//! maildrop is already full); the final `.` of DATA delivers the message to
//! each accepted recipient on its own, durably, with its own trace
//! headers, before the core sends that recipient's 250. Replies are
//! collected and written once no complete command is waiting, which gives
//! PIPELINING with few writes.

use std::collections::HashMap;
use std::io;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use mailbag_proto::lmtp::{Action, Conn, DeliveryResult, Event, Outcome, RcptResult, Settings};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, error, info, info_span, warn, Instrument};

use super::metrics::Delivery;
use super::wire::{self, Input};
use super::Shared;
use crate::auth::{PassDb, User};
use crate::store::deliver::{self, DeliverError};
use crate::store::{Store, StoreError};

/// Bytes read from the client at a time.
const READ_OCTETS: usize = 64 * 1024;
/// Mode of the Unix socket: the MTA's group may connect, others not.
const SOCKET_MODE: u32 = 0o660;

/// The message octets that all LMTP sessions together hold while
/// receiving DATA (`lmtp.max_receiving_octets`): many clients sending large
/// messages at once cannot take the server's memory. A message that does
/// not fit is dropped and answered 452, which MTAs retry.
#[derive(Debug)]
pub struct MessageBudget {
    max: u64,
    held: AtomicU64,
}

impl MessageBudget {
    /// The budget for `config`: at least room for one message of
    /// `max_message_octets` (twice that: a growing buffer may hold
    /// double what it was given).
    pub fn new(config: &crate::config::LmtpConfig) -> Arc<Self> {
        let one = config.max_message_octets.saturating_mul(2);
        Arc::new(MessageBudget {
            max: config.max_receiving_octets.max(one),
            held: AtomicU64::new(0),
        })
    }

    /// Octets held now, all sessions together.
    pub fn held(&self) -> u64 {
        self.held.load(Ordering::Relaxed)
    }
}

/// One session's share of the [`MessageBudget`]; given back on drop.
struct Reservation {
    budget: Arc<MessageBudget>,
    held: u64,
}

impl Reservation {
    /// Makes the share `octets`: false (and the share unchanged) when the
    /// budget cannot grow that far.
    fn fit(&mut self, octets: u64) -> bool {
        if octets <= self.held {
            self.budget
                .held
                .fetch_sub(self.held - octets, Ordering::Relaxed);
            self.held = octets;
            return true;
        }
        let more = octets - self.held;
        let max = self.budget.max;
        let grown = self
            .budget
            .held
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |h| {
                h.checked_add(more).filter(|&n| n <= max)
            });
        if grown.is_ok() {
            self.held = octets;
        }
        grown.is_ok()
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.fit(0);
    }
}

/// A bound LMTP listener.
pub(crate) enum Listener {
    /// `lmtp.listen`.
    Tcp(TcpListener),
    /// `lmtp.socket`; the path is removed again at shutdown.
    Unix(UnixListener, PathBuf),
}

impl Listener {
    fn describe(&self) -> String {
        match self {
            Listener::Tcp(l) => l
                .local_addr()
                .map_or_else(|_| "tcp".into(), |a| a.to_string()),
            Listener::Unix(_, path) => path.display().to_string(),
        }
    }
}

/// Binds the Unix socket at `path`. A socket file left by a process that
/// is gone is replaced; a live one, or anything that is not a socket, is
/// an error, so that two servers never steal each other's socket and a
/// typo never deletes a file.
pub(crate) fn bind_unix(path: &Path) -> io::Result<Listener> {
    bind_unix_then(path, || {})
}

/// [`bind_unix`], running `after_bind` once the socket exists: whatever
/// happens to the path then (a test swaps in a link) must not matter.
fn bind_unix_then(path: &Path, after_bind: impl FnOnce()) -> io::Result<Listener> {
    let with_path = |e: io::Error| io::Error::new(e.kind(), format!("{}: {e}", path.display()));
    match path.symlink_metadata() {
        Ok(meta) if meta.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!("{}: another server is listening", path.display()),
                ));
            }
            std::fs::remove_file(path).map_err(with_path)?;
        }
        Ok(_) => {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{}: exists and is not a socket", path.display()),
            ))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(with_path(e)),
    }
    // The socket is born with its mode: nothing is done by path after the
    // bind, where whoever can write the directory could have put a link
    // in its place. The umask is the process's, so it is set only for the
    // bind, at start-up, before any session runs.
    let listener = {
        use nix::sys::stat::{umask, Mode};
        let narrowed = Mode::from_bits_truncate(0o777 & !SOCKET_MODE);
        let before = umask(narrowed);
        let bound = UnixListener::bind(path);
        umask(before);
        bound.map_err(with_path)?
    };
    after_bind();
    Ok(Listener::Unix(listener, path.to_path_buf()))
}

/// Accepts LMTP connections until `shutdown`, one task per connection,
/// under LMTP's own limits (`lmtp.max_connections`, and per address
/// `lmtp.max_connections_per_address`), apart from POP3's.
pub(crate) async fn accept_loop<S: Store, P: PassDb>(
    listener: Listener,
    shared: Arc<Shared<S, P>>,
    permits: Arc<Semaphore>,
    shutdown: CancellationToken,
    sessions: TaskTracker,
) {
    info!(listen = %listener.describe(), "accepting LMTP connections");
    loop {
        let accepted = tokio::select! {
            a = accept(&listener) => a,
            _ = shutdown.cancelled() => break,
        };
        let (stream, peer, ip) = match accepted {
            Ok(x) => x,
            Err(e) => {
                // Out of file descriptors and the like: back off briefly
                // instead of spinning.
                warn!(error = %e, "LMTP accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let slot = match ip {
            Some(ip) => match shared.lmtp_slots.claim(ip) {
                Some(slot) => Some(slot),
                None => {
                    refuse(stream, &peer, true);
                    continue;
                }
            },
            None => None,
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            refuse(stream, &peer, false);
            continue;
        };
        let shared = shared.clone();
        let shutdown = shutdown.clone();
        let id = shared.next_session_id();
        let span = info_span!("lmtp", id, peer = %peer);
        sessions.spawn(
            async move {
                serve(stream, &shared, &shutdown).await;
                drop(slot);
                drop(permit);
            }
            .instrument(span),
        );
    }
    if let Listener::Unix(_, path) = &listener {
        let _ = std::fs::remove_file(path);
    }
}

/// A TCP or Unix stream, so that one session task type serves both.
enum Stream {
    Tcp(tokio::net::TcpStream),
    Unix(tokio::net::UnixStream),
}

/// Turns a connection away with a 421 that goes out only if it can be
/// written at once: a refusal never waits on the client.
fn refuse(stream: Stream, peer: &str, per_address: bool) {
    let line: &[u8] = if per_address {
        b"421 4.3.2 Too many connections from your address; try again later\r\n"
    } else {
        b"421 4.3.2 Too many connections; try again later\r\n"
    };
    warn!(peer = %peer, per_address, "LMTP connection refused: too many connections");
    stream.try_write(line);
}

async fn accept(listener: &Listener) -> io::Result<(Stream, String, Option<std::net::IpAddr>)> {
    match listener {
        Listener::Tcp(l) => {
            let (stream, peer) = l.accept().await?;
            // Replies are small and the client waits for each batch.
            let _ = stream.set_nodelay(true);
            Ok((Stream::Tcp(stream), peer.to_string(), Some(peer.ip())))
        }
        Listener::Unix(l, path) => {
            let (stream, _) = l.accept().await?;
            Ok((Stream::Unix(stream), path.display().to_string(), None))
        }
    }
}

impl Stream {
    /// Writes what the socket takes now, without waiting.
    fn try_write(&self, bytes: &[u8]) {
        let _ = match self {
            Stream::Tcp(s) => s.try_write(bytes),
            Stream::Unix(s) => s.try_write(bytes),
        };
    }
}

async fn serve<S: Store, P: PassDb>(
    stream: Stream,
    shared: &Shared<S, P>,
    shutdown: &CancellationToken,
) {
    match stream {
        Stream::Tcp(s) => session(s, shared, shutdown).await,
        Stream::Unix(s) => session(s, shared, shutdown).await,
    }
}

/// Serves one LMTP connection to its end. A connection that drops before
/// the final `.` delivers nothing; once it is read, the delivery finishes
/// even if the client has gone or shutdown begins.
pub async fn session<S, P, T>(mut stream: T, shared: &Shared<S, P>, shutdown: &CancellationToken)
where
    S: Store,
    P: PassDb,
    T: AsyncRead + AsyncWrite + Unpin,
{
    let config = shared.live();
    let settings = Settings {
        hostname: shared.hostname.clone(),
        max_message_octets: config.lmtp.max_message_octets,
        max_recipients: config.lmtp.max_recipients,
        max_bad_commands: config.limits.max_bad_commands,
        ..Settings::default()
    };
    let settings_max_recipients = settings.max_recipients.max(1);
    let mut conn = Conn::new(settings);
    // The users RCPT accepted, by canonical name, with the maildrop and
    // quota their entries give, for the delivery after DATA.
    let mut accepted: HashMap<String, User> = HashMap::new();
    let mut out: Vec<u8> = Vec::new();
    let mut buf = vec![0u8; READ_OCTETS];
    let mut receiving = Reservation {
        budget: shared.lmtp_receiving.clone(),
        held: 0,
    };
    debug!("connected");
    loop {
        match conn.next() {
            Event::Send(bytes) => out.extend_from_slice(&bytes),
            Event::Act(Action::CheckRecipient { address }) => {
                let (result, user) = check_recipient(shared, &address).await;
                if let Some(user) = user {
                    // Bounded: a recipient no longer here at DATA is
                    // looked up again.
                    if accepted.len() >= settings_max_recipients
                        && !accepted.contains_key(&user.name)
                    {
                        accepted.clear();
                    }
                    accepted.insert(user.name.clone(), user);
                }
                conn.complete(Outcome::Recipient(result));
            }
            Event::Act(Action::Deliver {
                return_path,
                recipients,
                addresses,
                message,
            }) => {
                let mut results = Vec::with_capacity(recipients.len());
                for (i, user) in recipients.iter().enumerate() {
                    let address = addresses.get(i).unwrap_or(user);
                    let user = accepted.get(user).cloned();
                    let result = match user {
                        Some(user) => {
                            deliver_one(shared, &return_path, &user, address, &message).await
                        }
                        None => match deliver::resolve_user(
                            &shared.passdb,
                            &shared.live().store.default_domain,
                            &recipients[i],
                        )
                        .await
                        {
                            Ok(Some(user)) => {
                                deliver_one(shared, &return_path, &user, address, &message).await
                            }
                            Ok(None) => {
                                info!(user = %recipients[i], "not delivered: the user is gone");
                                DeliveryResult::PermanentFailure
                            }
                            Err(e) => {
                                error!(error = %e, "password database unavailable");
                                DeliveryResult::TemporaryFailure
                            }
                        },
                    };
                    shared.metrics.delivery(match result {
                        DeliveryResult::Delivered => Delivery::Ok,
                        DeliveryResult::OverQuota => Delivery::OverQuota,
                        DeliveryResult::TemporaryFailure => Delivery::Temporary,
                        DeliveryResult::PermanentFailure => Delivery::Permanent,
                    });
                    results.push(result);
                }
                accepted.clear();
                conn.complete(Outcome::Delivered(results));
            }
            Event::NeedInput => {
                // The message being received (what one read can add to it
                // at most goes over) stays within the server-wide budget.
                if !receiving.fit(conn.message_octets() as u64) {
                    warn!("no room for the message being received; it will be refused");
                    conn.refuse_message();
                    receiving.fit(0);
                }
                // A client that stops reading is dropped after the idle
                // time, as one that stops writing is.
                if write_out(&mut stream, &mut out, conn.idle_timeout())
                    .await
                    .is_err()
                {
                    break;
                }
                conn.shrink();
                let until = tokio::time::Instant::now() + conn.idle_timeout();
                let read = wire::read_into(&mut stream, &mut buf, |bytes| conn.receive(bytes));
                // Only POP3 connections waiting to log in can be evicted.
                let never = std::future::pending();
                match wire::wait_for_input(read, until, shutdown, never).await {
                    Input::Received => {}
                    Input::Closed | Input::Evicted => break,
                    Input::ShuttingDown => {
                        wire::write_now(
                            &mut stream,
                            b"421 4.3.2 Server shutting down; try again later\r\n",
                        )
                        .await;
                        break;
                    }
                    Input::TimedOut => {
                        info!("idle too long; closing");
                        wire::write_now(&mut stream, b"421 4.4.2 Idle for too long; closing\r\n")
                            .await;
                        break;
                    }
                }
            }
            Event::Close => {
                let _ = write_out(&mut stream, &mut out, conn.idle_timeout()).await;
                let _ = tokio::time::timeout(conn.idle_timeout(), stream.shutdown()).await;
                break;
            }
        }
    }
    debug!("disconnected");
}

/// The answer to RCPT, and the user accepted (with the maildrop and
/// quota the user's entry gives).
async fn check_recipient<S: Store, P: PassDb>(
    shared: &Shared<S, P>,
    address: &str,
) -> (RcptResult, Option<User>) {
    let config = shared.live();
    match deliver::resolve_user(&shared.passdb, &config.store.default_domain, address).await {
        Ok(Some(user)) => {
            if let Some(maildrop) = &user.attributes.maildrop {
                if let Err(e) = crate::store::check_maildrop(maildrop) {
                    // The directory's mistake, never a reason to deliver
                    // anywhere else: the MTA keeps the mail until the
                    // entry is fixed.
                    error!(user = %user.name, error = %e, "recipient refused");
                    return (RcptResult::TemporaryFailure, None);
                }
            }
            let quota = user.quota(config.quota.for_user(&user.name));
            if deliver::at_quota(&shared.store, quota, user.mailbox()).await {
                info!(user = %user.name, "recipient refused: mailbox full");
                (RcptResult::OverQuota, None)
            } else {
                let result = RcptResult::Accepted {
                    user: user.name.clone(),
                };
                (result, Some(user))
            }
        }
        Ok(None) => {
            info!(recipient = %printable(address), "recipient refused: no such user");
            (RcptResult::Unknown, None)
        }
        Err(e) => {
            error!(error = %e, "password database unavailable");
            (RcptResult::TemporaryFailure, None)
        }
    }
}

/// Delivers one recipient's copy, with its own trace headers.
async fn deliver_one<S: Store, P: PassDb>(
    shared: &Shared<S, P>,
    return_path: &str,
    user: &User,
    address: &str,
    message: &[u8],
) -> DeliveryResult {
    // The core refuses paths with control characters, so these are safe
    // header values.
    let address = deliver::full_address(address, &shared.live().store.default_domain);
    let copy = deliver::with_headers(Some(return_path), &address, message);
    let octets = copy.len();
    let quota = user.quota(shared.live().quota.for_user(&user.name));
    let result = deliver::deliver(&shared.store, quota, user.mailbox(), copy).await;
    let user = &user.name;
    match result {
        Ok(id) => {
            info!(user = %user, octets, id = %id, "delivered");
            DeliveryResult::Delivered
        }
        Err(DeliverError::OverQuota) => {
            info!(user = %user, octets, "not delivered: mailbox full");
            DeliveryResult::OverQuota
        }
        Err(DeliverError::Store(StoreError::Permanent(reason))) => {
            error!(user = %user, error = %reason, "not delivered");
            DeliveryResult::PermanentFailure
        }
        Err(e) => {
            // A full disk, a permission problem, any IO error: the MTA
            // keeps the message and retries.
            error!(user = %user, error = %deliver::error_chain(&e), "not delivered; temporary failure");
            DeliveryResult::TemporaryFailure
        }
    }
}

/// Writes the replies out; a client that does not take them within
/// `limit` is dropped, as one that stops writing is.
async fn write_out<T: AsyncWrite + Unpin>(
    stream: &mut T,
    out: &mut Vec<u8>,
    limit: Duration,
) -> io::Result<()> {
    tokio::time::timeout(limit, wire::write_out(stream, out))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "client not reading"))?
}

/// A client-supplied address as it may appear in a log line: no control
/// characters, bounded length.
fn printable(s: &str) -> String {
    s.chars()
        .take(128)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[tokio::test]
    async fn a_live_socket_or_a_plain_file_is_never_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let live = dir.path().join("live.sock");
        let _other_server = std::os::unix::net::UnixListener::bind(&live).unwrap();
        let e = bind_unix(&live).err().expect("stole a live socket");
        assert_eq!(e.kind(), io::ErrorKind::AddrInUse);
        assert!(e.to_string().contains("live.sock"), "{e}");

        let file = dir.path().join("typo.conf");
        std::fs::write(&file, b"precious").unwrap();
        assert!(bind_unix(&file).is_err());
        assert_eq!(std::fs::read(&file).unwrap(), b"precious");

        let stale = dir.path().join("stale.sock");
        drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
        assert!(matches!(bind_unix(&stale), Ok(Listener::Unix(..))));
        let mode = std::fs::symlink_metadata(&stale)
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, SOCKET_MODE);
    }

    /// A writer of the socket's directory swaps a link in for the socket
    /// the moment it appears: the file the link points at keeps its mode
    /// (nothing is done by path after the bind).
    #[tokio::test]
    async fn a_link_swapped_in_for_the_new_socket_is_never_followed() {
        let dir = tempfile::tempdir().unwrap();
        let precious = dir.path().join("precious");
        std::fs::write(&precious, b"secret").unwrap();
        std::fs::set_permissions(&precious, std::fs::Permissions::from_mode(0o600)).unwrap();
        let socket = dir.path().join("lmtp.sock");
        let swap = || {
            std::fs::remove_file(&socket).unwrap();
            std::os::unix::fs::symlink(&precious, &socket).unwrap();
        };
        let bound = bind_unix_then(&socket, swap);
        let mode = std::fs::metadata(&precious).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "the link was followed");
        assert_eq!(std::fs::read(&precious).unwrap(), b"secret");
        drop(bound);
    }
}
