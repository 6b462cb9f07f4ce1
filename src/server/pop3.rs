//! The POP3 driver: one task per connection owns the socket, the timers
//! and the open maildrop, and performs the actions that the sans-IO core
//! asks for.
//!
//! Responses are collected and written once no complete command is
//! waiting, so pipelined commands are answered in order with few writes,
//! and every response (status line, body and terminating `.`) leaves in
//! one piece when it fits. Message bodies stream from the store through
//! [`Stuffer`] in large chunks and are never held whole. No command runs
//! while more than [`OUTPUT_LIMIT_OCTETS`] of answers wait: a client that
//! pipelines without reading is answered at the pace it reads.
//!
//! Time limits are deadlines, and cover writes as well as reads. Before
//! login the session must log in by the authorization deadline (counted
//! from the accept, whatever the client sends); after login, autologout
//! ends a session that sends nothing, or reads nothing, for that long
//! (RFC 1939 §3). Either way the maildrop lock and the connection's slots
//! go with the session.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use base64::prelude::{Engine as _, BASE64_STANDARD};
use mailbag_proto::dot::Stuffer;
use mailbag_proto::pop3::{
    Action, Conn, Credential, Event, Farewell, Index, Outcome, Settings, StoreFailure, Verb,
};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::time::Sleep;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tracing::{debug, error, info, warn};

use super::limits::{Attempt, Refused};
use super::metrics::{LoginResult, Metrics};
use super::tls::Stream;
use super::transcript::Transcript;
use super::wire::{self, Input};
use super::{Admission, Shared, HANDSHAKE_TIMEOUT};
use crate::auth::name::Matching;
use crate::auth::{AuthError, PassDb};
use crate::config::Config;
use crate::store::{Maildrop, MessageBody, Store, StoreError};

/// Bytes read from the client at a time.
const READ_OCTETS: usize = 4096;
/// Message bytes read from the store at a time, and the output size at
/// which a body is written out while streaming.
const BODY_CHUNK_OCTETS: usize = 128 * 1024;
/// An output buffer larger than this is released while the session idles.
const IDLE_BUFFER_OCTETS: usize = 8 * 1024;
/// Answers waiting to be written, past which they are written before the
/// next command runs: the bound RETR bodies have, for every answer.
pub const OUTPUT_LIMIT_OCTETS: usize = BODY_CHUNK_OCTETS;
/// The same bound before login, where every answer is small (CAPA, HELP):
/// a thousand stalled connections waiting to log in hold little.
pub const PRE_LOGIN_OUTPUT_OCTETS: usize = 16 * 1024;

/// Writes a last line if the connection takes it at once; never waits on
/// a client that does not read.
async fn write_now<T: AsyncWrite + Unpin>(stream: &mut T, line: Farewell) {
    wire::write_now(stream, &line.line()).await;
}

/// Why a wait before login was cut short.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cut {
    /// The authorization deadline passed.
    Deadline,
    /// The connection lost its pre-login place to a newer one.
    Evicted,
}

impl Cut {
    /// Logs the end and sends the same last line as a session cut while
    /// waiting for a command.
    async fn farewell<T: AsyncWrite + Unpin>(self, stream: &mut T) {
        match self {
            Cut::Deadline => {
                info!("not logged in by the authorization deadline");
                write_now(stream, Farewell::LoginTimeout).await;
            }
            Cut::Evicted => {
                info!("closed to make room for a newer connection waiting to log in");
                write_now(stream, Farewell::Evicted).await;
            }
        }
    }
}

/// Runs a wait of the login stage (a credential check, a failure delay)
/// until it ends, the authorization deadline passes or the connection
/// loses its pre-login place, whichever comes first: no wait before login
/// outlasts the deadline or keeps a place that was given away.
async fn before_login<F: Future>(
    wait: F,
    login_by: tokio::time::Instant,
    admission: &Admission,
) -> Result<F::Output, Cut> {
    tokio::select! {
        biased;
        _ = admission.evicted() => Err(Cut::Evicted),
        _ = tokio::time::sleep_until(login_by) => Err(Cut::Deadline),
        done = wait => Ok(done),
    }
}

/// How long a write may wait on the client.
#[derive(Debug, Clone, Copy)]
enum WriteLimit {
    /// Until this instant (before login: the authorization deadline).
    Until(tokio::time::Instant),
    /// This long without progress (after login: autologout).
    Stalled(Duration),
}

/// The client connection, with a time limit on every write: a write that
/// cannot finish in time fails with `TimedOut`, and the session ends. The
/// timer is armed only when the socket pushes back, so a write that goes
/// straight out costs nothing more. Before login, a write waiting on the
/// client also fails as soon as the connection loses its pre-login place.
pub struct Timed {
    stream: Stream,
    limit: WriteLimit,
    timer: Pin<Box<Sleep>>,
    armed: bool,
    evicted: Option<Pin<Box<WaitForCancellationFutureOwned>>>,
}

impl Timed {
    fn new(stream: Stream, login_by: tokio::time::Instant, admission: &Admission) -> Self {
        Timed {
            stream,
            limit: WriteLimit::Until(login_by),
            timer: Box::pin(tokio::time::sleep_until(login_by)),
            armed: false,
            evicted: admission
                .unauthenticated
                .as_ref()
                .map(|slot| Box::pin(slot.evicted_owned())),
        }
    }

    /// Logged in: writes may wait up to `autologout` without progress.
    fn logged_in(&mut self, autologout: Duration) {
        self.limit = WriteLimit::Stalled(autologout);
        self.armed = false;
        self.evicted = None;
    }

    /// The bound on answers waiting to be written.
    fn output_limit(&self) -> usize {
        match self.limit {
            WriteLimit::Until(_) => PRE_LOGIN_OUTPUT_OCTETS,
            WriteLimit::Stalled(_) => OUTPUT_LIMIT_OCTETS,
        }
    }

    /// Ready(Err) once the write limit has passed, else Pending (with the
    /// timer registered to wake the task).
    fn poll_limit(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Error> {
        if !self.armed {
            let at = match self.limit {
                WriteLimit::Until(at) => at,
                WriteLimit::Stalled(d) => tokio::time::Instant::now() + d,
            };
            self.timer.as_mut().reset(at);
            self.armed = true;
        }
        if let Some(evicted) = &mut self.evicted {
            if evicted.as_mut().poll(cx).is_ready() {
                return Poll::Ready(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "closed to make room for a newer connection",
                ));
            }
        }
        match self.timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the client did not read in time",
            )),
            Poll::Pending => Poll::Pending,
        }
    }

    fn guard<T>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<std::io::Result<T>>,
    ) -> Poll<std::io::Result<T>> {
        match polled {
            Poll::Ready(r) => {
                self.armed = false;
                Poll::Ready(r)
            }
            Poll::Pending => self.poll_limit(cx).map(Err),
        }
    }
}

impl AsyncWrite for Timed {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.stream).poll_write(cx, buf);
        this.guard(cx, polled)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.stream).poll_flush(cx);
        this.guard(cx, polled)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.stream).poll_shutdown(cx);
        this.guard(cx, polled)
    }
}

/// Serves one admitted POP3 connection, accepted at `accepted`, to its
/// end. Whatever way it ends, an open maildrop is dropped uncommitted
/// unless the core reached UPDATE.
pub async fn serve<S, P>(
    stream: Stream,
    peer: SocketAddr,
    id: u64,
    shared: &Shared<S, P>,
    shutdown: &CancellationToken,
    admission: Admission,
    accepted: tokio::time::Instant,
) where
    S: Store,
    P: PassDb,
{
    shared.metrics.connection_opened();
    let config = shared.live();
    let transcript = Transcript::start(&config.transcript, peer, id);
    let settings = settings(
        shared,
        &config,
        peer,
        id,
        stream.is_tls(),
        transcript.is_some(),
    );
    let login_by = accepted + settings.authorization_timeout;
    let mut session = Session {
        shared,
        metrics: &shared.metrics,
        config: &config,
        shutdown,
        peer,
        stream: Timed::new(stream, login_by, &admission),
        admission,
        autologout: settings.transaction_timeout,
        conn: Conn::new(settings),
        out: Vec::new(),
        transcript,
        login_by,
        maildrop: None,
        user: None,
        attempt: None,
        checked: None,
        command: None,
    };
    debug!("connected");
    let closing = session.run().await;
    session.finish(closing).await;
}

/// The core's policy and limits for a connection from `peer`.
fn settings<S: Store, P: PassDb>(
    shared: &Shared<S, P>,
    config: &Config,
    peer: SocketAddr,
    id: u64,
    tls_active: bool,
    transcript: bool,
) -> Settings {
    Settings {
        apop_timestamp: shared
            .passdb
            .apop_possible()
            .then(|| shared.apop_timestamp(id)),
        // RFC 2195 asks for the same unique form as APOP's timestamp.
        cram_md5_challenge: shared
            .passdb
            .cram_md5_possible()
            .then(|| shared.apop_timestamp(id)),
        sasl_mechanisms: mailbag_proto::sasl::Mechanism::ALL
            .into_iter()
            .filter(|m| {
                *m != mailbag_proto::sasl::Mechanism::ScramSha256 || shared.passdb.scram_possible()
            })
            .collect(),
        plaintext_auth: tls_active || Shared::<S, P>::plaintext_allowed(config, peer.ip()),
        tls_available: shared.tls.is_some(),
        master_users: config.auth.master_users.clone(),
        tls_active,
        max_auth_failures: config.auth.max_failures,
        max_bad_commands: config.limits.max_bad_commands,
        expire: config.pop3.expire.clone(),
        login_delay_secs: config.pop3.login_delay_secs,
        authorization_timeout: Duration::from_secs(config.limits.authorization_timeout_secs),
        transaction_timeout: Duration::from_secs(config.limits.autologout_secs),
        transcript,
        // OAUTHBEARER and XOAUTH2: the core offers them over TLS only.
        bearer_tokens: config.auth.oauth.is_some(),
        ..Settings::default()
    }
}

/// The session is over: the loop stops and [`Session::finish`] releases
/// what it holds. Whatever last line there was has been written.
struct Ended;

/// A step of the session that may end it.
type Step<T = ()> = Result<T, Ended>;

/// One POP3 connection's driver: the socket, the protocol core, and what
/// the core's actions opened. Each action has a method; [`Session::run`]
/// reads input, feeds the core and dispatches what it asks for.
struct Session<'a, S: Store, P: PassDb> {
    shared: &'a Shared<S, P>,
    metrics: &'a Metrics,
    config: &'a Config,
    shutdown: &'a CancellationToken,
    peer: SocketAddr,
    /// The connection's claims on the shared limits.
    admission: Admission,
    stream: Timed,
    conn: Conn,
    /// Answers waiting to be written.
    out: Vec<u8>,
    transcript: Option<Transcript<'a>>,
    /// The authorization deadline, counted from the accept.
    login_by: tokio::time::Instant,
    autologout: Duration,
    /// Open from login until UPDATE takes it (or the session drops it).
    maildrop: Option<S::Maildrop>,
    /// The canonical name of the user logged in.
    user: Option<String>,
    /// The login attempt being checked (server/limits.rs).
    attempt: Option<Attempt>,
    /// The stored name the passdb gave for the credential last checked:
    /// the maildrop to open when the login goes on under that name.
    checked: Option<String>,
    /// The command being answered, for its latency.
    command: Option<(Verb, Instant)>,
}

impl<S: Store, P: PassDb> Session<'_, S, P> {
    /// Drives the core until the session ends. True when it ended with
    /// the server's last word (QUIT, or a limit of the core): the
    /// connection is then shut down once its resources are released.
    async fn run(&mut self) -> bool {
        loop {
            let step = match self.conn.next() {
                Event::Send(bytes) => self.send(&bytes).await,
                Event::Received(line) => {
                    if let Some(t) = &mut self.transcript {
                        t.client(&line);
                    }
                    Ok(())
                }
                Event::Command(verb) => {
                    if let Some((verb, started)) = self.command.replace((verb, Instant::now())) {
                        self.metrics.command(verb.keyword(), started.elapsed());
                    }
                    Ok(())
                }
                Event::Act(action) => self.act(action).await,
                Event::NeedInput => {
                    // An attempt begun for a SASL exchange that ended
                    // without a proof (the client cancelled it) is
                    // settled as failed before the answer goes out.
                    if !self.conn.in_sasl_exchange() {
                        self.shared.failures.abandoned(self.attempt.take());
                    }
                    self.read().await
                }
                Event::Close => {
                    self.command_done();
                    let _ = self.write_out().await;
                    return true;
                }
            };
            if step.is_err() {
                return false;
            }
        }
    }

    /// Queues an answer of the core. Answers pile up no further than the
    /// limit: they go out before the next command runs.
    async fn send(&mut self, bytes: &[u8]) -> Step {
        if let Some(t) = &mut self.transcript {
            t.server(bytes);
        }
        self.out.extend_from_slice(bytes);
        if self.out.len() >= self.stream.output_limit() {
            self.write_out().await?;
        }
        Ok(())
    }

    /// Performs one action of the core and reports its outcome.
    async fn act(&mut self, action: Action) -> Step {
        let outcome = match action {
            Action::StartTls => self.start_tls().await?,
            Action::Rejected { user } => self.rejected(&user).await?,
            Action::ScramLookup { user } => self.scram_lookup(&user).await?,
            Action::CheckToken { user, token } => self.check_token(user.as_deref(), token).await?,
            Action::Authenticate { user, credential } => {
                self.authenticate(&user, &credential).await?
            }
            Action::OpenMaildrop { user } => self.open(user).await,
            Action::Retrieve {
                index,
                top_lines,
                status,
            } => self.retrieve(index, top_lines, &status).await?,
            Action::Summarize { indexes } => self.summarize(&indexes).await?,
            Action::Commit { deleted, retrieved } => self.commit(&deleted, &retrieved).await,
        };
        self.conn.complete(outcome);
        if self.user.is_some() && self.conn.in_transaction() {
            self.stream.logged_in(self.autologout);
        }
        Ok(())
    }

    /// RFC 2595 §4: the +OK goes out in the clear, whole, before the
    /// handshake starts; a handshake that fails ends the session.
    async fn start_tls(&mut self) -> Step<Outcome> {
        self.write_out().await?;
        let Some(tls) = &self.shared.tls else {
            return Err(Ended);
        };
        self.conn.discard_buffered_input();
        let until = self
            .login_by
            .min(tokio::time::Instant::now() + HANDSHAKE_TIMEOUT);
        // A connection that stalls in the handshake can lose its place,
        // as one waiting for a command can.
        let handshake = tokio::select! {
            r = tokio::time::timeout_at(until, self.stream.stream.start_tls(tls.acceptor())) => r,
            _ = self.admission.evicted() => {
                info!("closed during the STLS handshake to make room for a newer connection");
                return Err(Ended);
            }
        };
        match handshake {
            Ok(Ok(())) => {
                debug!("STLS: TLS started");
                Ok(Outcome::TlsStarted)
            }
            Ok(Err(e)) => {
                info!(error = %e, "STLS: TLS handshake failed");
                Err(Ended)
            }
            Err(_) => {
                info!("STLS: TLS handshake timed out");
                Err(Ended)
            }
        }
    }

    /// Counts a login attempt before its credential is checked, so that
    /// parallel guesses cannot all pass a check made before any fails;
    /// an attempt beyond the address's room waits (within the login
    /// deadline) for one in flight to be settled; an address blocked
    /// meanwhile is told so and the session ends.
    async fn begin_attempt(&mut self, user: &str) -> Step {
        let shared = self.shared;
        let failures = &shared.failures;
        // Every spelling of a user is one user (auth/name.rs).
        let user = &Matching::from_config(&shared.live()).key(user);
        loop {
            // Listening before asking, so a settle in between is not missed.
            let mut settled = std::pin::pin!(failures.settled());
            settled.as_mut().enable();
            match failures.begin(self.peer.ip(), user, Instant::now()) {
                Ok(a) => {
                    failures.abandoned(self.attempt.replace(a));
                    return Ok(());
                }
                Err(Refused::Busy) => self.before_login(settled).await?,
                Err(Refused::Blocked(_)) => {
                    self.metrics.login(LoginResult::Refused);
                    let _ = self.stream.write_all(&Farewell::LoginsBlocked.line()).await;
                    return Err(Ended);
                }
            }
        }
    }

    /// Runs a wait of the login stage (see [`before_login`]); if it is cut
    /// short, an attempt still open counts as failed (its end was never
    /// learned) and the session ends with the cut's last line.
    async fn before_login<F: Future>(&mut self, wait: F) -> Step<F::Output> {
        match before_login(wait, self.login_by, &self.admission).await {
            Ok(done) => Ok(done),
            Err(cut) => {
                self.shared.failures.abandoned(self.attempt.take());
                cut.farewell(&mut self.stream).await;
                Err(Ended)
            }
        }
    }

    /// Checks a credential (USER/PASS, APOP, AUTH PLAIN, LOGIN, CRAM-MD5).
    async fn authenticate(&mut self, user: &str, credential: &Credential) -> Step<Outcome> {
        // Answer what came before while the hash runs.
        self.write_out().await?;
        self.begin_attempt(user).await?;
        let started = tokio::time::Instant::now();
        let shared = self.shared;
        let checked = self
            .before_login(Matching::from_config(&shared.live()).verify(
                &shared.passdb,
                user,
                credential,
            ))
            .await?;
        match checked {
            Ok(canonical) => {
                self.checked = Some(canonical.clone());
                Ok(Outcome::Authenticated { user: canonical })
            }
            Err(AuthError::Invalid) => {
                log_auth_failure(self.peer, user, "invalid-credentials");
                self.metrics.login(LoginResult::Invalid);
                let delay = match self.attempt.take() {
                    Some(a) => shared.failures.failed(a, Instant::now()),
                    None => shared.failures.policy().base_delay,
                };
                // Every failure is answered at the same time after the
                // attempt, however long the check took, so timing does not
                // tell which users exist. Only this session waits; if the
                // login deadline or an eviction comes first, the session
                // ends unanswered.
                self.before_login(tokio::time::sleep_until(started + delay))
                    .await?;
                Ok(Outcome::AuthRejected)
            }
            Err(AuthError::Temporary(e)) => {
                // Nothing was checked: not a failure.
                if let Some(a) = self.attempt.take() {
                    shared.failures.unavailable(a, Instant::now());
                }
                self.metrics.login(LoginResult::Unavailable);
                error!(error = %e, "password database unavailable");
                Ok(Outcome::AuthUnavailable)
            }
        }
    }

    /// A SCRAM exchange is one attempt, counted before the keys are looked
    /// up; the proof settles it.
    async fn scram_lookup(&mut self, user: &str) -> Step<Outcome> {
        self.write_out().await?;
        self.begin_attempt(user).await?;
        let shared = self.shared;
        let names = Matching::from_config(&shared.live());
        let keys = self
            .before_login(names.scram_keys(&shared.passdb, user))
            .await?;
        Ok(match keys {
            Ok((canonical, keys)) => {
                self.checked = Some(canonical.clone());
                let mut nonce = [0u8; 18];
                rand::fill(&mut nonce);
                Outcome::ScramKeys {
                    user: canonical,
                    keys,
                    nonce: BASE64_STANDARD.encode(nonce),
                }
            }
            Err(e) => {
                if let Some(a) = self.attempt.take() {
                    self.shared.failures.unavailable(a, Instant::now());
                }
                error!(error = %e, "password database unavailable");
                Outcome::AuthUnavailable
            }
        })
    }

    /// Checks an OAuth 2.0 bearer token (OAUTHBEARER, XOAUTH2): counted as
    /// a login attempt first, and a refusal is answered after the failure
    /// delay, as a wrong password is. The token's user claim, mapped by
    /// the name rule, must be a user of the passdb (and the user the
    /// client named, if it named one). The token itself is never logged.
    /// A check that could not be made (the passdb or the token issuer
    /// unavailable) gives the attempt's reservation back.
    fn give_back(&mut self) {
        if let Some(a) = self.attempt.take() {
            self.shared.failures.unavailable(a, Instant::now());
        }
    }

    async fn check_token(
        &mut self,
        named: Option<&str>,
        token: mailbag_proto::secret::Secret<String>,
    ) -> Step<Outcome> {
        self.write_out().await?;
        // Failures are counted under the name the client gave; a client
        // that gives none is still counted per address.
        self.begin_attempt(named.unwrap_or("(bearer token)"))
            .await?;
        let started = tokio::time::Instant::now();
        let shared = self.shared;
        let config = shared.live();
        let Some(oauth) = config.auth.oauth.clone() else {
            self.give_back();
            return Ok(Outcome::AuthUnavailable);
        };
        let names = Matching::from_config(&config);
        let checked = self
            .before_login(crate::auth::oauth::check_token(oauth, token))
            .await?;
        let refused = match checked {
            Ok(claimed) if named.is_some_and(|n| names.key(n) != names.key(&claimed)) => {
                "token-names-another-user"
            }
            Ok(claimed) => match self
                .before_login(names.resolve(&shared.passdb, &claimed))
                .await?
            {
                Ok(Some(user)) => {
                    self.checked = Some(user.clone());
                    return Ok(Outcome::Authenticated { user });
                }
                Ok(None) => "token-user-unknown",
                Err(e) => {
                    self.metrics.login(LoginResult::Unavailable);
                    error!(error = %e, "password database unavailable");
                    self.give_back();
                    return Ok(Outcome::AuthUnavailable);
                }
            },
            Err(crate::auth::oauth::TokenError::Invalid(reason)) => reason,
            Err(crate::auth::oauth::TokenError::Unavailable(e)) => {
                self.metrics.login(LoginResult::Unavailable);
                error!(error = %e, "bearer tokens cannot be checked");
                self.give_back();
                return Ok(Outcome::AuthUnavailable);
            }
        };
        // One word, as the log's other reasons are.
        let reason = refused.replace(' ', "-");
        log_auth_failure(self.peer, named.unwrap_or(""), &reason);
        self.metrics.login(LoginResult::Invalid);
        let delay = match self.attempt.take() {
            Some(a) => shared.failures.failed(a, Instant::now()),
            None => shared.failures.policy().base_delay,
        };
        self.before_login(tokio::time::sleep_until(started + delay))
            .await?;
        Ok(Outcome::AuthRejected)
    }

    /// The core found a login wrong by itself (a SCRAM proof): answered
    /// after the failure delay, as a wrong password is.
    async fn rejected(&mut self, user: &str) -> Step<Outcome> {
        self.write_out().await?;
        log_auth_failure(self.peer, user, "invalid-credentials");
        self.metrics.login(LoginResult::Invalid);
        let failures = &self.shared.failures;
        let delay = match self.attempt.take() {
            Some(a) => failures.failed(a, Instant::now()),
            None => {
                let user = Matching::from_config(&self.shared.live()).key(user);
                failures.failed_unreserved(self.peer.ip(), &user, Instant::now())
            }
        };
        self.before_login(tokio::time::sleep(delay)).await?;
        Ok(Outcome::AuthRejected)
    }

    /// Opens the maildrop of `user`, whose credential is good. Every way
    /// of logging in (USER/PASS, APOP, each SASL mechanism) ends here.
    async fn open(&mut self, user: String) -> Outcome {
        if let Some(a) = self.attempt.take() {
            self.shared.failures.succeeded(a, Instant::now());
        }
        // A master user's authzid comes as the client wrote it: the
        // maildrop (and its lock) is the stored user's. The name the
        // passdb gave at the check is that already, and where the entry
        // says nothing of the maildrop, nothing else is to be looked up.
        let passdb = &self.shared.passdb;
        let found = if !passdb.has_user_attributes() && self.checked.take().as_ref() == Some(&user)
        {
            Ok(Some(crate::auth::User::named(user.clone())))
        } else {
            let names = Matching::from_config(&self.shared.live());
            names.resolve_user(passdb, &user).await
        };
        let found = match found {
            Ok(Some(stored)) => stored,
            // Where the user's entry may name the maildrop, a lookup that
            // failed never falls back to the one the name gives.
            Ok(None) | Err(_) if self.shared.passdb.has_user_attributes() => {
                self.metrics.login(LoginResult::Unavailable);
                error!(user = %user, error = ?found.err(), "cannot look up the user's maildrop");
                return Outcome::OpenFailed(StoreFailure::Temporary);
            }
            _ => crate::auth::User::named(user),
        };
        let user = found.name.clone();
        if let Err(wait) = self.shared.login_delay.check(&user, Instant::now()) {
            self.metrics.login(LoginResult::Refused);
            return Outcome::LoginDelayed {
                seconds: wait.as_secs().max(1),
            };
        }
        // A session that has just ended may still hold the lock.
        let opened = crate::store::open_waiting(&self.shared.store, found.mailbox()).await;
        match opened {
            Ok(m) => {
                let messages = m.messages().to_vec();
                info!(user = %user, messages = messages.len(), "logged in");
                if let Some(t) = &mut self.transcript {
                    t.logged_in(&user);
                }
                // Logged in: no longer counts against the unauthenticated
                // limit.
                self.admission.unauthenticated = None;
                self.metrics.login(LoginResult::Ok);
                self.user = Some(user);
                self.maildrop = Some(m);
                Outcome::Opened(messages)
            }
            Err(e) => {
                self.metrics.login(match e {
                    StoreError::Locked => LoginResult::InUse,
                    _ => LoginResult::Unavailable,
                });
                Outcome::OpenFailed(store_failure("open maildrop", &e))
            }
        }
    }

    /// RETR and TOP: the status line, then the body streamed from the
    /// store through the dot-stuffer.
    async fn retrieve(
        &mut self,
        index: Index,
        top_lines: Option<u64>,
        status: &[u8],
    ) -> Step<Outcome> {
        let Some(m) = self.maildrop.as_mut() else {
            return Err(Ended);
        };
        let index = index.get();
        let size = m.messages().get(index).map_or(0, |m| m.size);
        let reader = match m.read(index).await {
            Ok(reader) => reader,
            Err(e) => return Ok(Outcome::NotSent(store_failure("read message", &e))),
        };
        if let Some(t) = &mut self.transcript {
            t.server(status);
        }
        self.out.extend_from_slice(status);
        let stuffer = match top_lines {
            Some(n) => Stuffer::top(n),
            None => Stuffer::new(),
        };
        let body = Body {
            size,
            whole: top_lines.is_none(),
        };
        if let Err(e) = stream_body(reader, body, stuffer, &mut self.out, &mut self.stream).await {
            // The +OK is out: the only honest signal left is to end the
            // connection. What waits in the output buffer goes first:
            // the whole answers to commands pipelined before this one,
            // then this one's unfinished start (never its end, and
            // nothing of a piece of the wrong size).
            warn!(error = %e, index, "message transfer failed");
            let _ = self.write_out().await;
            return Err(Ended);
        }
        if let Some(t) = &mut self.transcript {
            t.note("(message body sent)");
        }
        Ok(Outcome::Sent)
    }

    /// SUMMARY: one line per message asked for.
    async fn summarize(&mut self, indexes: &[Index]) -> Step<Outcome> {
        if self.maildrop.is_none() {
            return Err(Ended);
        }
        // Reading many messages takes a while: answer what came before
        // first.
        self.write_out().await?;
        let Some(m) = self.maildrop.as_mut() else {
            return Err(Ended);
        };
        let large = self.config.pop3.summary_large_octets;
        Ok(crate::store::summary::summarize_maildrop(m, indexes, large).await)
    }

    /// RFC 1939 §6 UPDATE: the maildrop is committed and released.
    async fn commit(&mut self, deleted: &[Index], retrieved: &[Index]) -> Outcome {
        let positions =
            |indexes: &[Index]| -> Vec<usize> { indexes.iter().map(|i| i.get()).collect() };
        match self.maildrop.take() {
            None => Outcome::Committed,
            Some(m) => match m.commit(&positions(deleted), &positions(retrieved)).await {
                Ok(()) => Outcome::Committed,
                Err(e) => Outcome::CommitFailed(store_failure("commit", &e)),
            },
        }
    }

    /// Writes what waits, then waits for the client's next bytes: before
    /// login until the deadline counted from the accept, after login for
    /// autologout counted from the last command. Shutdown, an eviction or
    /// a timeout ends the session with its last line.
    async fn read(&mut self) -> Step {
        self.command_done();
        if let Some(t) = &mut self.transcript {
            t.flush();
        }
        self.write_out().await?;
        if self.out.capacity() > IDLE_BUFFER_OCTETS {
            self.out = Vec::new();
        }
        self.conn.shrink();
        let logged_in = self.user.is_some();
        let until = if logged_in {
            tokio::time::Instant::now() + self.autologout
        } else {
            self.login_by
        };
        let read = read_into(&mut self.stream.stream, &mut self.conn);
        let end = match wire::wait_for_input(read, until, self.shutdown, self.admission.evicted())
            .await
        {
            Input::Received => return Ok(()),
            Input::Closed => return Err(Ended),
            Input::ShuttingDown => Farewell::ShuttingDown,
            Input::Evicted => {
                info!("closed to make room for a newer connection waiting to log in");
                Farewell::Evicted
            }
            Input::TimedOut if logged_in => {
                info!("autologout: idle too long");
                Farewell::Autologout
            }
            Input::TimedOut => {
                info!("not logged in by the authorization deadline");
                Farewell::LoginTimeout
            }
        };
        write_now(&mut self.stream, end).await;
        Err(Ended)
    }

    /// The command being answered is done: its latency goes to metrics.
    fn command_done(&mut self) {
        if let Some((verb, started)) = self.command.take() {
            self.metrics.command(verb.keyword(), started.elapsed());
        }
    }

    async fn write_out(&mut self) -> Step {
        if !self.out.is_empty() {
            self.metrics.sent(self.out.len());
        }
        wire::write_out(&mut self.stream, &mut self.out)
            .await
            .map_err(|_| Ended)
    }

    /// Releases what the session holds and logs its end.
    async fn finish(mut self, closing: bool) {
        self.command_done();
        // A client gone in the middle of a SASL exchange: its attempt
        // counts as failed (and stops taking its address's room).
        self.shared.failures.abandoned(self.attempt.take());
        let uncommitted = self.maildrop.is_some();
        let Session {
            mut stream,
            maildrop,
            admission,
            metrics,
            conn,
            user,
            ..
        } = self;
        // The maildrop's lock and the address's connection slot go before
        // the client sees the connection end: one that reconnects at once
        // (to the same maildrop, from the same address) must not find them
        // held.
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
    wire::read_into(stream, &mut buf, |bytes| conn.receive(bytes)).await
}

/// The message a body belongs to, as the snapshot announced it.
#[derive(Debug, Clone, Copy)]
struct Body {
    /// Octets announced by LIST (canonical, before stuffing).
    size: u64,
    /// RETR (the whole message), not TOP.
    whole: bool,
}

/// Checks what a RETR sends against the size announced for the message,
/// by the stuffer's own count of canonical octets (no second pass).
#[derive(Debug, Clone, Copy)]
struct SizeCheck {
    body: Body,
}

impl SizeCheck {
    fn new(body: Body) -> Self {
        SizeCheck { body }
    }

    /// An error as soon as the message can no longer be the announced
    /// size: what was fed, with the shortest ending it could still get,
    /// is longer. Checked before the piece's output can go out, so no
    /// octet past the announced size is ever sent.
    /// TOP sends a prefix of the message, so the same bound holds for it.
    fn fed(&self, stuffer: &Stuffer) -> std::io::Result<()> {
        if stuffer.canonical_at_least() > self.body.size {
            return Err(size_changed(self.body.size));
        }
        Ok(())
    }

    /// An error unless exactly the announced octets came; called before
    /// the terminator goes out. A TOP that `stopped` at its line limit sent
    /// part of the message by design; one that did not sent all of it
    /// (`TOP n` with n past the last line, as some clients fetch mail
    /// without marking it), and is checked as RETR is.
    fn finish(&self, stuffer: &Stuffer, stopped: bool) -> std::io::Result<()> {
        let all_sent = self.body.whole || !stopped;
        if all_sent && stuffer.canonical_size() != self.body.size {
            return Err(size_changed(self.body.size));
        }
        Ok(())
    }
}

fn size_changed(size: u64) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        format!("the message changed while it was sent: {size} octets were announced"),
    )
}

/// Pipes a stored message through the dot-stuffer. What remains in `out`
/// at the end (the tail and the terminating `.`) goes out with the next
/// flush, so a small message leaves as one write with its status line.
///
/// A RETR whose message turns out longer or shorter than the size
/// announced for it (another program truncated or appended to the file)
/// fails before its terminating `.` can go out: a client must never take
/// a short or long body as the whole message. So does a TOP that reaches
/// the message's end, or whose part is already longer than the message
/// announced.
async fn stream_body<R, T>(
    mut reader: R,
    body: Body,
    mut stuffer: Stuffer,
    out: &mut Vec<u8>,
    stream: &mut T,
) -> std::io::Result<()>
where
    R: MessageBody,
    T: AsyncWrite + Unpin,
{
    let size = body.size;
    let check = SizeCheck::new(body);
    // What a piece of the wrong size adds to `out` never goes out.
    let start = out.len();
    // A small message the store read whole goes through the stuffer in
    // one pass, straight from the store's buffer. Pipelined RETRs would
    // pile their answers up in `out`: past a chunk's worth it goes out
    // now, as the chunked path below does.
    if let Some(whole) = reader.in_memory() {
        let stopped = stuffer.feed(whole, out);
        if let Err(e) = check.fed(&stuffer).and(check.finish(&stuffer, stopped)) {
            out.truncate(start);
            return Err(e);
        }
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
    let mut stopped = false;
    loop {
        let piece = reader.next_piece(&mut chunk).await?;
        if piece.is_empty() {
            break;
        }
        let before = out.len();
        stopped = stuffer.feed(piece, out);
        if let Err(e) = check.fed(&stuffer) {
            out.truncate(before);
            return Err(e);
        }
        if stopped {
            break;
        }
        if out.len() >= BODY_CHUNK_OCTETS {
            stream.write_all(out).await?;
            out.clear();
        }
    }
    check.finish(&stuffer, stopped)?;
    stuffer.finish(out);
    Ok(())
}

/// A store failure as the core distinguishes it, logged with its cause
/// (the client gets a code and a short phrase; the log gets the chain).
fn store_failure(what: &str, e: &StoreError) -> StoreFailure {
    match e {
        StoreError::Locked => {
            info!("maildrop in use by another session");
            StoreFailure::Locked
        }
        StoreError::Vanished => {
            info!("{what}: message removed by another program");
            StoreFailure::Vanished
        }
        StoreError::Temporary(source) => {
            error!(error = %source, "{what} failed");
            StoreFailure::Temporary
        }
        StoreError::Permanent(msg) => {
            error!(error = %msg, "{what} failed");
            StoreFailure::Permanent
        }
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
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader, ReadBuf};

    use crate::auth::passwd_file::PasswdFile;
    use crate::config::Config;
    use crate::store::maildir::{MaildirStore, MessageReader};

    fn small(octets: usize) -> MessageReader {
        MessageReader::Memory(std::io::Cursor::new(vec![b'a'; octets]))
    }

    /// A message the store streams instead of holding whole.
    struct Streamed(std::io::Cursor<Vec<u8>>);

    impl AsyncRead for Streamed {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.0).poll_read(cx, buf)
        }
    }

    impl MessageBody for Streamed {}

    fn retr(size: u64) -> Body {
        Body { size, whole: true }
    }

    #[tokio::test]
    async fn answers_to_pipelined_retrs_do_not_pile_up() {
        let mut out = Vec::new();
        let mut sent = Vec::new();
        // Small answers stay in the buffer, to leave with what follows...
        stream_body(small(1000), retr(1002), Stuffer::new(), &mut out, &mut sent)
            .await
            .unwrap();
        assert_eq!(out.len(), 1005);
        assert!(sent.is_empty());
        // ...but never more than a chunk's worth: a client that pipelines
        // a thousand RETRs must not make the session hold them all.
        for _ in 0..300 {
            stream_body(small(1000), retr(1002), Stuffer::new(), &mut out, &mut sent)
                .await
                .unwrap();
            assert!(out.len() < BODY_CHUNK_OCTETS);
        }
        assert_eq!(sent.len() + out.len(), 301 * 1005);
        assert!(sent.ends_with(b"a\r\n.\r\n"));
    }

    #[tokio::test]
    async fn a_body_longer_or_shorter_than_announced_never_ends_with_a_dot() {
        let big = 300 * 1024;
        for (stored, announced) in [(1000, 1102), (1000, 902), (big, big as u64 - 98)] {
            for streamed in [false, true] {
                let mut out = Vec::new();
                let mut sent = Vec::new();
                let body = vec![b'a'; stored];
                let result = if streamed {
                    let r = Streamed(std::io::Cursor::new(body));
                    stream_body(r, retr(announced), Stuffer::new(), &mut out, &mut sent).await
                } else {
                    let r = MessageReader::Memory(std::io::Cursor::new(body));
                    stream_body(r, retr(announced), Stuffer::new(), &mut out, &mut sent).await
                };
                let e = result.expect_err("a changed message went out as complete");
                assert_eq!(e.kind(), std::io::ErrorKind::InvalidData);
                assert!(!sent.ends_with(b"\r\n.\r\n") && !out.ends_with(b"\r\n.\r\n"));
                if !streamed {
                    // Nothing of a message read whole is left to go out.
                    assert!(out.is_empty() && sent.is_empty());
                }
            }
        }
        // TOP sends part of a message by design.
        let mut out = Vec::new();
        let top = Body {
            size: 5000,
            whole: false,
        };
        let r = Streamed(std::io::Cursor::new(b"a: b\n\nline\nline\n".to_vec()));
        stream_body(r, top, Stuffer::top(1), &mut out, &mut Vec::new())
            .await
            .unwrap();
        assert_eq!(out, b"a: b\r\n\r\nline\r\n.\r\n");
    }

    /// A message the store hands over in the pieces given, one per read
    /// (as PostgreSQL's chunk rows come).
    struct Pieces(std::collections::VecDeque<Vec<u8>>);

    impl AsyncRead for Pieces {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            if let Some(piece) = self.0.front_mut() {
                let n = piece.len().min(buf.remaining());
                buf.put_slice(&piece[..n]);
                piece.drain(..n);
                if piece.is_empty() {
                    self.0.pop_front();
                }
            }
            Poll::Ready(Ok(()))
        }
    }

    impl MessageBody for Pieces {}

    fn pieces(pieces: &[&[u8]]) -> Pieces {
        Pieces(pieces.iter().map(|p| p.to_vec()).collect())
    }

    /// A message that grew by a line end (or a CR) since LIST announced
    /// it: no octet past the announced size goes out, even when the
    /// piece that brought it fills the output buffer, which is sent as
    /// soon as it is full.
    #[tokio::test]
    async fn no_octet_past_the_announced_size_goes_out() {
        let half = vec![b'a'; 100_000];
        let size = 200_000;
        let grown: [(&[&[u8]], u64); 4] = [
            // A line end more: a size two octets past, at a line start.
            (&[&half, &half, b"\n"], size),
            (&[&half, &[&half[..], b"\n"].concat()], size),
            // One octet past, and the message can no longer end in time.
            (&[&half, &[&half[..], b"\r"].concat()], size + 1),
            (&[&half, &[&half[..99_998], b"\r\n\r"].concat()], size),
        ];
        for (stored, announced) in grown {
            let mut out = Vec::new();
            let mut sent = Vec::new();
            let r = pieces(stored);
            let e = stream_body(r, retr(announced), Stuffer::new(), &mut out, &mut sent)
                .await
                .expect_err("a grown message went out as complete");
            assert_eq!(e.kind(), std::io::ErrorKind::InvalidData);
            assert!(
                sent.len() as u64 <= announced,
                "{} octets sent of {announced} announced",
                sent.len()
            );
            assert!(!sent.ends_with(b".\r\n") && !out.ends_with(b".\r\n"));
        }
        // The same pieces at their true size go out whole, CR at a piece's
        // end and LF at the next one's start included.
        let stored: [&[u8]; 4] = [&half, b"\r", b"\n.", &half];
        let mut out = Vec::new();
        let mut sent = Vec::new();
        stream_body(
            pieces(&stored),
            retr(200_005),
            Stuffer::new(),
            &mut out,
            &mut sent,
        )
        .await
        .unwrap();
        sent.extend_from_slice(&out);
        assert_eq!(sent.len(), 200_005 + 1 + 3);
        assert!(sent.ends_with(b"a\r\n.\r\n") && sent[100_000..100_004] == *b"\r\n..");
    }

    /// `TOP n` past the last line sends the whole message (clients use it
    /// to fetch mail without marking it): a changed message fails it as it
    /// fails RETR, and so does one whose top alone is longer than the size
    /// announced; a TOP that stops at its line limit is not measured.
    #[tokio::test]
    async fn a_top_that_reaches_the_end_of_a_changed_message_never_ends_with_a_dot() {
        let message = b"a: b\n\nline\nline\n".to_vec();
        let size = 20; // canonical
        let top = |size| Body { size, whole: false };
        for streamed in [false, true] {
            let run = |stored: Vec<u8>, body: Body, stuffer: Stuffer| async move {
                let (mut out, mut sent) = (Vec::new(), Vec::new());
                let result = if streamed {
                    let r = Streamed(std::io::Cursor::new(stored));
                    stream_body(r, body, stuffer, &mut out, &mut sent).await
                } else {
                    let r = MessageReader::Memory(std::io::Cursor::new(stored));
                    stream_body(r, body, stuffer, &mut out, &mut sent).await
                };
                sent.extend_from_slice(&out);
                (result, sent)
            };
            let changed = [
                (message[..10].to_vec(), top(size), Stuffer::top(100)),
                (
                    [&message[..], b"more\n"].concat(),
                    top(size),
                    Stuffer::top(100),
                ),
                (message.clone(), top(size - 2), Stuffer::top(100)),
                // The top alone is longer than the whole message was.
                (message.clone(), top(8), Stuffer::top(1)),
            ];
            for (stored, body, stuffer) in changed {
                let (result, sent) = run(stored.clone(), body, stuffer).await;
                let e = result.expect_err("a changed message's TOP ended");
                assert_eq!(e.kind(), std::io::ErrorKind::InvalidData);
                assert!(!sent.ends_with(b".\r\n"), "{stored:?} {streamed}");
            }
            let (result, sent) = run(message.clone(), top(size), Stuffer::top(100)).await;
            result.unwrap();
            assert_eq!(sent, b"a: b\r\n\r\nline\r\nline\r\n.\r\n");
            // Stopped at its limit: what follows is not measured.
            let longer = [&message[..], b"more\n"].concat();
            let (result, sent) = run(longer, top(size), Stuffer::top(1)).await;
            result.unwrap();
            assert_eq!(sent, b"a: b\r\n\r\nline\r\n.\r\n");
        }
    }

    /// The server's end of an in-memory connection; remembers the largest
    /// buffer the session handed to one write (all it had waiting).
    struct Recorder {
        inner: tokio::io::DuplexStream,
        largest_write: Arc<AtomicUsize>,
    }

    impl AsyncRead for Recorder {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.inner).poll_read(cx, buf)
        }
    }

    impl AsyncWrite for Recorder {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            self.largest_write.fetch_max(buf.len(), Ordering::Relaxed);
            Pin::new(&mut self.inner).poll_write(cx, buf)
        }

        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.inner).poll_flush(cx)
        }

        fn poll_shutdown(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.inner).poll_shutdown(cx)
        }
    }

    type TestShared = Shared<MaildirStore, PasswdFile>;

    /// A server's shared state over a temporary directory, with `alice`
    /// (password `wonderland`) holding `messages` messages.
    fn shared(dir: &std::path::Path, limits: &str, messages: usize) -> Arc<TestShared> {
        std::fs::write(dir.join("passwd"), "alice:{PLAIN}wonderland\n").unwrap();
        let text = format!(
            "[pop3]\nlisten = [\"127.0.0.1:0\"]\n[store]\nroot = \"mail\"\n\
             [auth]\npasswd_file = \"passwd\"\nfailure_delay_ms = 10\n[limits]\n{limits}\n"
        );
        let config = Config::parse(&text, dir).unwrap();
        let maildir = dir.join("mail/localhost/alice/Maildir");
        for sub in ["tmp", "new", "cur"] {
            std::fs::create_dir_all(maildir.join(sub)).unwrap();
        }
        for i in 0..messages {
            let name = format!("1700000000.M{i}P1.mailbag-test-host,S=30,W=31");
            std::fs::write(
                maildir.join("new").join(name),
                b"Subject: n\n\nbody of message\n",
            )
            .unwrap();
        }
        let passdb = PasswdFile::open_with_cache(&config.auth.passwd_file, None).unwrap();
        let store = MaildirStore::new(
            config.store.root.clone(),
            config.store.path.clone(),
            config.store.default_domain.clone(),
        );
        Arc::new(Shared::new(store, passdb, config, None))
    }

    /// Starts a session on an in-memory connection of `capacity` octets
    /// each way; returns the client's end and the largest write seen.
    fn session(
        shared: &Arc<TestShared>,
        capacity: usize,
    ) -> (tokio::io::DuplexStream, Arc<AtomicUsize>) {
        let (client, largest_write, _) = session_task(shared, capacity);
        (client, largest_write)
    }

    fn session_task(
        shared: &Arc<TestShared>,
        capacity: usize,
    ) -> (
        tokio::io::DuplexStream,
        Arc<AtomicUsize>,
        tokio::task::JoinHandle<()>,
    ) {
        let (client, server) = tokio::io::duplex(capacity);
        let largest_write = Arc::new(AtomicUsize::new(0));
        let stream = Stream::Memory(Box::new(Recorder {
            inner: server,
            largest_write: largest_write.clone(),
        }));
        let shared = shared.clone();
        let task = tokio::spawn(async move {
            let peer: SocketAddr = "127.0.0.1:40000".parse().unwrap();
            let admission = shared.admit(peer.ip()).unwrap();
            let shutdown = CancellationToken::new();
            let accepted = tokio::time::Instant::now();
            serve(stream, peer, 1, &shared, &shutdown, admission, accepted).await;
        });
        (client, largest_write, task)
    }

    #[tokio::test]
    async fn pipelined_uidls_wait_for_the_client_instead_of_piling_up() {
        let dir = tempfile::tempdir().unwrap();
        let shared = shared(dir.path(), "", 1000);
        let (client, largest_write) = session(&shared, 16 * 1024);
        let (read, mut write) = tokio::io::split(client);
        let mut read = BufReader::new(read);
        let mut line = String::new();
        read.read_line(&mut line).await.unwrap();
        // 2,000 UIDLs (each answer lists 1,000 messages) sent without
        // reading a byte: the server stops at what it may hold.
        const UIDLS: usize = 2000;
        let writer = tokio::spawn(async move {
            write
                .write_all(b"USER alice\r\nPASS wonderland\r\n")
                .await
                .unwrap();
            write.write_all(&b"UIDL\r\n".repeat(UIDLS)).await.unwrap();
            write.write_all(b"QUIT\r\n").await.unwrap();
            write
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        // One UIDL answer, for the bound below.
        let answer = 1000 * "1000 1700000000.M999P1.mailbag-test-host\r\n".len() + 64;
        let held = largest_write.load(Ordering::Relaxed);
        assert!(
            held <= OUTPUT_LIMIT_OCTETS + answer,
            "{held} octets waited for a client that did not read"
        );
        // Now the client reads: every answer arrives, whole and in order.
        let mut answers = 0;
        let mut lines = 0;
        loop {
            line.clear();
            if read.read_line(&mut line).await.unwrap() == 0 {
                break;
            }
            if line == ".\r\n" {
                answers += 1;
            } else if !line.starts_with('+') {
                lines += 1;
            }
        }
        drop(writer.await.unwrap());
        assert_eq!(answers, UIDLS);
        assert_eq!(lines, UIDLS * 1000);
        assert!(line.is_empty());
        let held = largest_write.load(Ordering::Relaxed);
        assert!(held <= OUTPUT_LIMIT_OCTETS + answer, "{held}");
    }

    #[tokio::test]
    async fn pipelined_help_before_login_holds_little() {
        let dir = tempfile::tempdir().unwrap();
        let shared = shared(dir.path(), "max_bad_commands = 100000", 0);
        let (client, largest_write) = session(&shared, 4096);
        let (read, mut write) = tokio::io::split(client);
        const HELPS: usize = 3000;
        let writer = tokio::spawn(async move {
            write.write_all(&b"HELP\r\n".repeat(HELPS)).await.unwrap();
            write.write_all(b"QUIT\r\n").await.unwrap();
            write
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        let help = 1024;
        let held = largest_write.load(Ordering::Relaxed);
        assert!(held <= PRE_LOGIN_OUTPUT_OCTETS + help, "{held}");
        let mut read = BufReader::new(read);
        let mut answers = 0;
        let mut line = String::new();
        while read.read_line(&mut line).await.unwrap() > 0 {
            answers += usize::from(line == ".\r\n");
            line.clear();
        }
        drop(writer.await.unwrap());
        assert_eq!(answers, HELPS);
    }

    #[tokio::test]
    async fn a_connection_stuck_writing_before_login_ends_when_it_loses_its_place() {
        let dir = tempfile::tempdir().unwrap();
        let shared = shared(dir.path(), "max_unauthenticated = 1", 0);
        let (stalled, _, task) = session_task(&shared, 1024);
        let (_read, mut write) = tokio::io::split(stalled);
        let writer = tokio::spawn(async move {
            let _ = write.write_all(&b"HELP\r\n".repeat(1000)).await;
            write
        });
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!task.is_finished(), "the stalled session should be writing");
        // A newcomer takes the only place: the stalled session ends now,
        // not at the login deadline (120 s).
        let (_newcomer, _) = session(&shared, 1024);
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("the evicted session went on writing")
            .unwrap();
        assert_eq!(shared.unauthenticated.waiting(), 1);
        writer.abort();
    }

    #[tokio::test]
    async fn a_byte_now_and_then_does_not_outlive_the_login_deadline() {
        let dir = tempfile::tempdir().unwrap();
        let shared = shared(dir.path(), "authorization_timeout_secs = 2", 0);
        let (client, _) = session(&shared, 4096);
        let (read, mut write) = tokio::io::split(client);
        let mut read = BufReader::new(read);
        // One byte every 0.7 s, each well within the 2 s limit of an idle
        // timer; 10 of them would take 7 s.
        let dribble = tokio::spawn(async move {
            let mut sent = 0;
            for &b in b"USER alice" {
                tokio::time::sleep(Duration::from_millis(700)).await;
                if write.write_all(&[b]).await.is_err() {
                    break;
                }
                sent += 1;
            }
            sent
        });
        let mut lines = Vec::new();
        loop {
            let mut line = String::new();
            if read.read_line(&mut line).await.unwrap() == 0 {
                break;
            }
            lines.push(line);
        }
        assert!(lines[0].starts_with("+OK"), "{lines:?}");
        assert_eq!(
            lines.last().unwrap(),
            "-ERR [SYS/TEMP] Too long without logging in; closing\r\n"
        );
        // The deadline ended it, not a pause between bytes.
        assert!(dribble.await.unwrap() < 10);
        assert_eq!(shared.unauthenticated.waiting(), 0);
    }
}
