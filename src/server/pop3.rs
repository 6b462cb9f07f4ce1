//! The POP3 driver: one task per connection owns the socket, the timers
//! and the open maildrop, and performs the actions that the sans-IO core
//! asks for.
//!
//! Responses are collected and written once no complete command is
//! waiting, so pipelined commands are answered in order with few writes,
//! and every response (status line, body and terminating `.`) leaves in
//! one piece when it fits. Message bodies stream from the store through
//! [`Stuffer`] in large chunks and are never held whole.

use std::net::SocketAddr;

use mailbag_proto::dot::Stuffer;
use mailbag_proto::pop3::{Action, Conn, Event, Outcome, Settings, StoreFailure};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use super::transcript::Transcript;
use super::Shared;
use crate::auth::{AuthError, PassDb};
use crate::store::{Maildrop, Store, StoreError};

/// Bytes read from the client at a time.
const READ_OCTETS: usize = 4096;
/// Message bytes read from the store at a time, and the output size at
/// which a body is written out while streaming.
const BODY_CHUNK_OCTETS: usize = 128 * 1024;
/// An output buffer larger than this is released while the session idles.
const IDLE_BUFFER_OCTETS: usize = 8 * 1024;

/// Serves one POP3 connection to its end. Whatever way it ends, an open
/// maildrop is dropped uncommitted unless the core reached UPDATE.
pub async fn serve<S, P, T>(
    mut stream: T,
    peer: SocketAddr,
    session: u64,
    shared: &Shared<S, P>,
    shutdown: &CancellationToken,
) where
    S: Store,
    P: PassDb,
    T: AsyncRead + AsyncWrite + Unpin,
{
    let config = &shared.config;
    let settings = Settings {
        apop_timestamp: shared
            .passdb
            .apop_possible()
            .then(|| shared.apop_timestamp(session)),
        plaintext_auth: shared.plaintext_allowed(peer.ip()),
        max_auth_failures: config.auth.max_failures,
        max_bad_commands: config.limits.max_bad_commands,
        expire: config.pop3.expire.clone(),
        login_delay_secs: config.pop3.login_delay_secs,
        authorization_timeout: std::time::Duration::from_secs(
            config.limits.authorization_timeout_secs,
        ),
        transaction_timeout: std::time::Duration::from_secs(config.limits.autologout_secs),
        ..Settings::default()
    };
    let mut transcript = Transcript::start(&config.transcript, peer, session);
    let settings = Settings {
        transcript: transcript.is_some(),
        ..settings
    };
    let mut conn = Conn::new(settings);
    let mut out: Vec<u8> = Vec::new();
    let mut maildrop: Option<S::Maildrop> = None;
    let mut user: Option<String> = None;
    let mut buf = [0u8; READ_OCTETS];
    debug!("connected");
    loop {
        match conn.next() {
            Event::Send(bytes) => {
                if let Some(t) = &mut transcript {
                    t.server(&bytes);
                }
                out.extend_from_slice(&bytes);
            }
            Event::Received(line) => {
                if let Some(t) = &mut transcript {
                    t.client(&line);
                }
            }
            Event::Act(action) => {
                let outcome = match action {
                    Action::Authenticate {
                        user: name,
                        credential,
                    } => {
                        // Answer what came before while the hash runs.
                        if write_out(&mut stream, &mut out).await.is_err() {
                            break;
                        }
                        let started = tokio::time::Instant::now();
                        match shared.passdb.verify(&name, &credential).await {
                            Ok(canonical) => {
                                if let Some(t) = &mut transcript {
                                    t.logged_in(&canonical);
                                }
                                user = Some(canonical.clone());
                                Outcome::Authenticated { user: canonical }
                            }
                            Err(AuthError::Invalid) => {
                                warn!(
                                    peer = %peer.ip(),
                                    user = %printable(&name),
                                    reason = "invalid credentials",
                                    "authentication failed"
                                );
                                // Every failure is answered at the same time
                                // after the attempt, however long the check
                                // took, so timing does not tell which users
                                // exist. Only this session waits.
                                tokio::time::sleep_until(started + shared.config.failure_delay())
                                    .await;
                                Outcome::AuthRejected
                            }
                            Err(AuthError::Temporary(e)) => {
                                error!(error = %e, "password database unavailable");
                                Outcome::AuthUnavailable
                            }
                        }
                    }
                    Action::OpenMaildrop { user: name } => match shared.store.open(&name).await {
                        Ok(m) => {
                            let messages = m.messages().to_vec();
                            info!(user = %name, messages = messages.len(), "logged in");
                            maildrop = Some(m);
                            Outcome::Opened(messages)
                        }
                        Err(e) => {
                            log_store_error("open maildrop", &e);
                            Outcome::OpenFailed(failure(&e))
                        }
                    },
                    Action::Retrieve {
                        index,
                        top_lines,
                        status,
                    } => {
                        let Some(m) = maildrop.as_mut() else {
                            break;
                        };
                        match m.read(index).await {
                            Err(e) => {
                                log_store_error("read message", &e);
                                Outcome::NotSent(failure(&e))
                            }
                            Ok(reader) => {
                                if let Some(t) = &mut transcript {
                                    t.server(&status);
                                }
                                out.extend_from_slice(&status);
                                let stuffer = match top_lines {
                                    Some(n) => Stuffer::top(n),
                                    None => Stuffer::new(),
                                };
                                if let Err(e) =
                                    stream_body(reader, stuffer, &mut out, &mut stream).await
                                {
                                    // The +OK is out: the only honest signal
                                    // left is to end the connection.
                                    warn!(error = %e, index, "message transfer failed");
                                    break;
                                }
                                if let Some(t) = &mut transcript {
                                    t.note("(message body sent)");
                                }
                                Outcome::Sent
                            }
                        }
                    }
                    Action::Summarize { indexes } => {
                        let Some(m) = maildrop.as_mut() else {
                            break;
                        };
                        // Reading many messages takes a while: answer what
                        // came before first.
                        if write_out(&mut stream, &mut out).await.is_err() {
                            break;
                        }
                        let large = config.pop3.summary_large_octets;
                        crate::summary::summarize_maildrop(m, &indexes, large).await
                    }
                    Action::Commit { deleted, retrieved } => match maildrop.take() {
                        None => Outcome::Committed,
                        Some(m) => match m.commit(&deleted, &retrieved).await {
                            Ok(()) => Outcome::Committed,
                            Err(e) => {
                                log_store_error("commit", &e);
                                Outcome::CommitFailed(failure(&e))
                            }
                        },
                    },
                };
                conn.complete(outcome);
            }
            Event::NeedInput => {
                if let Some(t) = &mut transcript {
                    t.flush();
                }
                if write_out(&mut stream, &mut out).await.is_err() {
                    break;
                }
                if out.capacity() > IDLE_BUFFER_OCTETS {
                    out = Vec::new();
                }
                conn.shrink();
                let read = tokio::select! {
                    r = tokio::time::timeout(conn.idle_timeout(), stream.read(&mut buf)) => r,
                    _ = shutdown.cancelled() => {
                        let _ = stream
                            .write_all(b"-ERR [SYS/TEMP] Server shutting down; nothing was deleted\r\n")
                            .await;
                        break;
                    }
                };
                match read {
                    Err(_) => {
                        info!("autologout: idle too long");
                        let _ = stream
                            .write_all(
                                b"-ERR Autologout: idle for too long; nothing was deleted\r\n",
                            )
                            .await;
                        break;
                    }
                    Ok(Ok(0)) | Ok(Err(_)) => break,
                    Ok(Ok(n)) => conn.receive(&buf[..n]),
                }
            }
            Event::Close => {
                let _ = write_out(&mut stream, &mut out).await;
                let _ = stream.shutdown().await;
                break;
            }
        }
    }
    let uncommitted = maildrop.is_some();
    drop(maildrop);
    let t = conn.tally();
    info!(
        user = user.as_deref().unwrap_or("-"),
        retrieved = t.retrieved,
        retrieved_octets = t.retrieved_octets,
        deleted = t.deleted,
        deleted_octets = t.deleted_octets,
        remaining = t.remaining,
        remaining_octets = t.remaining_octets,
        uncommitted,
        "session ended"
    );
}

async fn write_out<T: AsyncWrite + Unpin>(
    stream: &mut T,
    out: &mut Vec<u8>,
) -> std::io::Result<()> {
    if out.is_empty() {
        return Ok(());
    }
    stream.write_all(out).await?;
    stream.flush().await?;
    out.clear();
    Ok(())
}

/// Pipes a stored message through the dot-stuffer. What remains in `out`
/// at the end (the tail and the terminating `.`) goes out with the next
/// flush, so a small message leaves as one write with its status line.
async fn stream_body<R, T>(
    mut reader: R,
    mut stuffer: Stuffer,
    out: &mut Vec<u8>,
    stream: &mut T,
) -> std::io::Result<()>
where
    R: AsyncRead + Unpin,
    T: AsyncWrite + Unpin,
{
    let mut chunk = vec![0u8; BODY_CHUNK_OCTETS];
    loop {
        let n = reader.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        if stuffer.feed(&chunk[..n], out) {
            break;
        }
        if out.len() >= BODY_CHUNK_OCTETS {
            stream.write_all(out).await?;
            out.clear();
        }
    }
    stuffer.finish(out);
    Ok(())
}

fn failure(e: &StoreError) -> StoreFailure {
    match e {
        StoreError::Locked => StoreFailure::Locked,
        StoreError::Vanished => StoreFailure::Vanished,
        StoreError::Temporary(_) => StoreFailure::Temporary,
        StoreError::Permanent(_) => StoreFailure::Permanent,
    }
}

fn log_store_error(what: &str, e: &StoreError) {
    match e {
        StoreError::Locked => info!("maildrop in use by another session"),
        StoreError::Vanished => info!("{what}: message removed by another program"),
        StoreError::Temporary(source) => error!(error = %source, "{what} failed"),
        StoreError::Permanent(msg) => error!(error = %msg, "{what} failed"),
    }
}

/// A client-supplied name as it may appear in a log line: no control
/// characters (no forged log lines), bounded length.
fn printable(s: &str) -> String {
    s.chars()
        .take(64)
        .map(|c| if c.is_control() || c == ' ' { '?' } else { c })
        .collect()
}
