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
use std::time::Instant;

use base64::prelude::{Engine as _, BASE64_STANDARD};
use mailbag_proto::dot::Stuffer;
use mailbag_proto::pop3::{Action, Conn, Event, Outcome, Settings, StoreFailure, Verb};
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use super::limits::Attempt;
use super::metrics::{LoginResult, Metrics};
use super::tls::Stream;
use super::transcript::Transcript;
use super::{Shared, HANDSHAKE_TIMEOUT};
use crate::auth::{AuthError, PassDb};
use crate::store::{Maildrop, MessageBody, Store, StoreError};

/// Bytes read from the client at a time.
const READ_OCTETS: usize = 4096;
/// Message bytes read from the store at a time, and the output size at
/// which a body is written out while streaming.
const BODY_CHUNK_OCTETS: usize = 128 * 1024;
/// An output buffer larger than this is released while the session idles.
const IDLE_BUFFER_OCTETS: usize = 8 * 1024;

/// The answer to a login attempt from an address that is refused.
const BLOCKED_LINE: &[u8] =
    b"-ERR [SYS/TEMP] Too many failed logins from your address; try again later\r\n";

/// Serves one POP3 connection to its end. Whatever way it ends, an open
/// maildrop is dropped uncommitted unless the core reached UPDATE.
pub async fn serve<S, P>(
    mut stream: Stream,
    peer: SocketAddr,
    session: u64,
    shared: &Shared<S, P>,
    shutdown: &CancellationToken,
) where
    S: Store,
    P: PassDb,
{
    let mut admission = match shared.admit(peer.ip()) {
        Ok(a) => a,
        Err(text) => {
            shared.metrics.connection_refused();
            warn!(reason = %text, "connection refused");
            let _ = stream
                .write_all(format!("-ERR [SYS/TEMP] {text}\r\n").as_bytes())
                .await;
            let _ = stream.shutdown().await;
            return;
        }
    };
    shared.metrics.connection_opened();
    let metrics = &*shared.metrics;
    let config = shared.live();
    let tls_active = matches!(stream, Stream::Tls(_));
    let settings = Settings {
        apop_timestamp: shared
            .passdb
            .apop_possible()
            .then(|| shared.apop_timestamp(session)),
        // RFC 2195 asks for the same unique form as APOP's timestamp.
        cram_md5_challenge: shared
            .passdb
            .cram_md5_possible()
            .then(|| shared.apop_timestamp(session)),
        plaintext_auth: tls_active || Shared::<S, P>::plaintext_allowed(&config, peer.ip()),
        tls_available: shared.tls.is_some(),
        master_users: config.auth.master_users.clone(),
        tls_active,
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
    // The login attempt being checked (server/limits.rs).
    let mut attempt: Option<Attempt> = None;
    // The command being answered, for its latency.
    let mut command: Option<(Verb, Instant)> = None;
    // The session ended with the server's last word (QUIT, or a limit):
    // the connection is shut down once its resources are released.
    let mut closing = false;
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
            Event::Command(verb) => {
                if let Some((verb, started)) = command.replace((verb, Instant::now())) {
                    metrics.command(verb.keyword(), started.elapsed());
                }
            }
            Event::Act(action) => {
                let outcome = match action {
                    Action::StartTls => {
                        // RFC 2595 §4: the +OK goes out in the clear, whole,
                        // before the handshake starts.
                        if write_out(&mut stream, &mut out, metrics).await.is_err() {
                            break;
                        }
                        let Some(tls) = &shared.tls else {
                            break;
                        };
                        conn.discard_buffered_input();
                        match tokio::time::timeout(
                            HANDSHAKE_TIMEOUT,
                            stream.start_tls(tls.acceptor()),
                        )
                        .await
                        {
                            Ok(Ok(())) => {
                                debug!("STLS: TLS started");
                                Outcome::TlsStarted
                            }
                            Ok(Err(e)) => {
                                info!(error = %e, "STLS: TLS handshake failed");
                                break;
                            }
                            Err(_) => {
                                info!("STLS: TLS handshake timed out");
                                break;
                            }
                        }
                    }
                    Action::Rejected { user: name } => {
                        if write_out(&mut stream, &mut out, metrics).await.is_err() {
                            break;
                        }
                        log_auth_failure(peer, &name, "invalid-credentials");
                        metrics.login(LoginResult::Invalid);
                        let delay = match attempt.take() {
                            Some(a) => shared.failures.failed(a, Instant::now()),
                            None => {
                                shared
                                    .failures
                                    .failed_unreserved(peer.ip(), &name, Instant::now())
                            }
                        };
                        tokio::time::sleep(delay).await;
                        Outcome::AuthRejected
                    }
                    Action::ScramLookup { user: name } => {
                        if write_out(&mut stream, &mut out, metrics).await.is_err() {
                            break;
                        }
                        // A SCRAM exchange is one attempt, counted before
                        // the keys are looked up; the proof settles it.
                        match shared.failures.begin(peer.ip(), &name, Instant::now()) {
                            Ok(a) => shared.failures.abandoned(attempt.replace(a)),
                            Err(_) => {
                                metrics.login(LoginResult::Refused);
                                let _ = stream.write_all(BLOCKED_LINE).await;
                                break;
                            }
                        }
                        match shared.passdb.scram_keys(&name).await {
                            Ok((canonical, keys)) => {
                                let mut nonce = [0u8; 18];
                                rand::fill(&mut nonce);
                                Outcome::ScramKeys {
                                    user: canonical,
                                    keys,
                                    nonce: BASE64_STANDARD.encode(nonce),
                                }
                            }
                            Err(e) => {
                                error!(error = %e, "password database unavailable");
                                Outcome::AuthUnavailable
                            }
                        }
                    }
                    Action::Authenticate {
                        user: name,
                        credential,
                    } => {
                        // Answer what came before while the hash runs.
                        if write_out(&mut stream, &mut out, metrics).await.is_err() {
                            break;
                        }
                        // Counted before it is checked: parallel guesses
                        // cannot all pass a check made before any fails.
                        match shared.failures.begin(peer.ip(), &name, Instant::now()) {
                            Ok(a) => shared.failures.abandoned(attempt.replace(a)),
                            Err(_) => {
                                metrics.login(LoginResult::Refused);
                                let _ = stream.write_all(BLOCKED_LINE).await;
                                break;
                            }
                        }
                        let started = tokio::time::Instant::now();
                        match shared.passdb.verify(&name, &credential).await {
                            Ok(canonical) => Outcome::Authenticated { user: canonical },
                            Err(AuthError::Invalid) => {
                                log_auth_failure(peer, &name, "invalid-credentials");
                                metrics.login(LoginResult::Invalid);
                                let delay = match attempt.take() {
                                    Some(a) => shared.failures.failed(a, Instant::now()),
                                    None => shared.failures.policy().base_delay,
                                };
                                // Every failure is answered at the same time
                                // after the attempt, however long the check
                                // took, so timing does not tell which users
                                // exist. Only this session waits.
                                tokio::time::sleep_until(started + delay).await;
                                Outcome::AuthRejected
                            }
                            Err(AuthError::Temporary(e)) => {
                                metrics.login(LoginResult::Unavailable);
                                error!(error = %e, "password database unavailable");
                                Outcome::AuthUnavailable
                            }
                        }
                    }
                    // Every way of logging in (USER/PASS, APOP, each SASL
                    // mechanism) ends here once the credential is good.
                    Action::OpenMaildrop { user: name } => {
                        if let Some(a) = attempt.take() {
                            shared.failures.succeeded(a, Instant::now());
                        }
                        let delayed = shared.login_delay.check(&name, Instant::now()).err();
                        if let Some(wait) = delayed {
                            metrics.login(LoginResult::Refused);
                            Outcome::LoginDelayed {
                                seconds: wait.as_secs().max(1),
                            }
                        } else {
                            match shared.store.open(&name).await {
                                Ok(m) => {
                                    let messages = m.messages().to_vec();
                                    info!(user = %name, messages = messages.len(), "logged in");
                                    if let Some(t) = &mut transcript {
                                        t.logged_in(&name);
                                    }
                                    // Logged in: no longer counts against the
                                    // unauthenticated limit.
                                    admission.unauthenticated = None;
                                    metrics.login(LoginResult::Ok);
                                    user = Some(name.clone());
                                    maildrop = Some(m);
                                    Outcome::Opened(messages)
                                }
                                Err(e) => {
                                    metrics.login(match e {
                                        StoreError::Locked => LoginResult::InUse,
                                        _ => LoginResult::Unavailable,
                                    });
                                    log_store_error("open maildrop", &e);
                                    Outcome::OpenFailed(failure(&e))
                                }
                            }
                        }
                    }
                    Action::Retrieve {
                        index,
                        top_lines,
                        status,
                    } => {
                        let Some(m) = maildrop.as_mut() else {
                            break;
                        };
                        let size = m.messages().get(index).map_or(0, |m| m.size);
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
                                    stream_body(reader, size, stuffer, &mut out, &mut stream).await
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
                        if write_out(&mut stream, &mut out, metrics).await.is_err() {
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
                if let Some((verb, started)) = command.take() {
                    metrics.command(verb.keyword(), started.elapsed());
                }
                if let Some(t) = &mut transcript {
                    t.flush();
                }
                if write_out(&mut stream, &mut out, metrics).await.is_err() {
                    break;
                }
                if out.capacity() > IDLE_BUFFER_OCTETS {
                    out = Vec::new();
                }
                conn.shrink();
                let read = tokio::select! {
                    r = tokio::time::timeout(conn.idle_timeout(), read_into(&mut stream, &mut conn)) => r,
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
                    Ok(Ok(_)) => {}
                }
            }
            Event::Close => {
                if let Some((verb, started)) = command.take() {
                    metrics.command(verb.keyword(), started.elapsed());
                }
                let _ = write_out(&mut stream, &mut out, metrics).await;
                closing = true;
                break;
            }
        }
    }
    if let Some((verb, started)) = command.take() {
        metrics.command(verb.keyword(), started.elapsed());
    }
    let uncommitted = maildrop.is_some();
    // The maildrop's lock and the address's connection slot go before the
    // client sees the connection end: one that reconnects at once (to the
    // same maildrop, from the same address) must not find them held.
    drop(maildrop);
    drop(admission);
    if closing {
        let _ = stream.shutdown().await;
    }
    metrics.connection_closed();
    if user.is_some() {
        metrics.authenticated_session_ended();
    }
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

/// Reads what the client sent into the core; `Ok(0)` at the end of the
/// stream. On plain TCP it waits for readability first and reads into a
/// buffer on the stack, so a session waiting for its next command holds no
/// read buffer at all (tens of thousands of idle sessions add up).
async fn read_into(stream: &mut Stream, conn: &mut Conn) -> std::io::Result<usize> {
    if let Stream::Plain(tcp) = stream {
        loop {
            tcp.readable().await?;
            let mut buf = [0u8; READ_OCTETS];
            match tcp.try_read(&mut buf) {
                Ok(n) => {
                    conn.receive(&buf[..n]);
                    return Ok(n);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
    }
    let mut buf = vec![0u8; READ_OCTETS];
    let n = stream.read(&mut buf).await?;
    conn.receive(&buf[..n]);
    Ok(n)
}

async fn write_out<T: AsyncWrite + Unpin>(
    stream: &mut T,
    out: &mut Vec<u8>,
    metrics: &Metrics,
) -> std::io::Result<()> {
    if out.is_empty() {
        return Ok(());
    }
    metrics.sent(out.len());
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
    size: u64,
    mut stuffer: Stuffer,
    out: &mut Vec<u8>,
    stream: &mut T,
) -> std::io::Result<()>
where
    R: MessageBody,
    T: AsyncWrite + Unpin,
{
    // A small message the store read whole goes through the stuffer in
    // one pass, straight from the store's buffer. Pipelined RETRs would
    // pile their answers up in `out`: past a chunk's worth it goes out
    // now, as the chunked path below does.
    if let Some(whole) = reader.in_memory() {
        stuffer.feed(whole, out);
        stuffer.finish(out);
        if out.len() >= BODY_CHUNK_OCTETS {
            stream.write_all(out).await?;
            out.clear();
        }
        return Ok(());
    }
    // A small message needs a small buffer (one more octet, so that the
    // first read can already see the end of the file).
    let chunk_octets = usize::try_from(size)
        .map_or(BODY_CHUNK_OCTETS, |s| s.saturating_add(1))
        .clamp(4096, BODY_CHUNK_OCTETS);
    // read_buf fills spare capacity: no zeroing of the buffer first.
    let mut chunk = Vec::with_capacity(chunk_octets);
    out.reserve(chunk_octets + chunk_octets / 8);
    loop {
        chunk.clear();
        let n = reader.read_buf(&mut chunk).await?;
        if n == 0 {
            break;
        }
        if stuffer.feed(&chunk, out) {
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

/// The one stable line per failed login that fail2ban and CrowdSec match
/// (docs/LOGGING.md; contrib/fail2ban): everything is in the message, in a
/// fixed order, so the subscriber's field formatting cannot move it.
pub(crate) fn log_auth_failure(peer: SocketAddr, user: &str, reason: &str) {
    warn!(
        target: "mailbag::auth",
        "authentication failed: rip={} user={} reason={reason} service=pop3",
        canonical_ip(peer.ip()),
        printable(user)
    );
}

fn canonical_ip(ip: std::net::IpAddr) -> std::net::IpAddr {
    match ip {
        std::net::IpAddr::V6(v6) => v6.to_ipv4_mapped().map(std::net::IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

/// A client-supplied name as it may appear in a log line: no control
/// characters (no forged log lines), bounded length.
fn printable(s: &str) -> String {
    s.chars()
        .take(64)
        .map(|c| {
            if c.is_control() || c.is_whitespace() {
                '?'
            } else {
                c
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::maildir::MessageReader;

    fn small(octets: usize) -> MessageReader {
        MessageReader::Memory(std::io::Cursor::new(vec![b'a'; octets]))
    }

    #[tokio::test]
    async fn answers_to_pipelined_retrs_do_not_pile_up() {
        let mut out = Vec::new();
        let mut sent = Vec::new();
        // Small answers stay in the buffer, to leave with what follows...
        stream_body(small(1000), 1000, Stuffer::new(), &mut out, &mut sent)
            .await
            .unwrap();
        assert_eq!(out.len(), 1005);
        assert!(sent.is_empty());
        // ...but never more than a chunk's worth: a client that pipelines
        // a thousand RETRs must not make the session hold them all.
        for _ in 0..300 {
            stream_body(small(1000), 1000, Stuffer::new(), &mut out, &mut sent)
                .await
                .unwrap();
            assert!(out.len() < BODY_CHUNK_OCTETS);
        }
        assert_eq!(sent.len() + out.len(), 301 * 1005);
        assert!(sent.ends_with(b"a\r\n.\r\n"));
    }
}
