//! The network side: listeners, per-connection drivers, shutdown.
//!
//! [`Server`] binds the configured addresses and runs one tokio task per
//! connection; each task drives a sans-IO protocol core
//! ([`mailbag_proto::pop3::Conn`], [`mailbag_proto::lmtp::Conn`]) against
//! the store and passdb it is generic over.

pub mod limits;
pub mod lmtp;
pub mod metrics;
pub mod pop3;
pub mod proxy;
pub mod tls;
pub mod transcript;
mod wire;
pub mod workers;

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use mailbag_proto::pop3::Farewell;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, info_span, warn, Instrument};

use crate::auth::PassDb;
use crate::config::Config;
use crate::store::Store;

/// How long a client gets to finish a TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a connection that took the place of one waiting to log in
/// (every connection permit was taken) waits for the permit that one
/// gives back.
const PERMIT_WAIT: Duration = Duration::from_secs(5);

/// How long sessions get to finish after shutdown is requested before
/// they are dropped (dropping deletes nothing).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// What every session of a server shares.
pub struct Shared<S, P> {
    /// The mail store.
    pub store: S,
    /// The password database.
    pub passdb: P,
    /// The configuration the server started with.
    pub config: Config,
    /// This host's name, for APOP timestamps.
    pub hostname: String,
    /// Open POP3 connections per client address.
    pub slots: Arc<limits::AddressSlots>,
    /// Open LMTP connections per client address (TCP only).
    pub lmtp_slots: Arc<limits::AddressSlots>,
    /// Message octets LMTP sessions hold while receiving, all together.
    pub lmtp_receiving: Arc<lmtp::MessageBudget>,
    /// Failed logins per address and user.
    pub failures: limits::Failures,
    /// RFC 2449 LOGIN-DELAY (off when not configured).
    pub login_delay: limits::LoginDelay,
    /// The configuration as last (re)loaded: what each new session reads.
    live: std::sync::RwLock<Arc<Config>>,
    /// Connections not yet logged in.
    pub unauthenticated: Arc<limits::PreLogin>,
    /// Counters for the metrics endpoint.
    pub metrics: Arc<metrics::Metrics>,
    /// The certificate and key, when TLS is configured.
    pub tls: Option<Arc<tls::Tls>>,
    session_ids: AtomicU64,
}

/// A connection's claims on the shared limits; dropped when it ends.
pub struct Admission {
    _slot: limits::AddressSlot,
    /// Held until login; released then so that logged-in sessions do not
    /// count against the unauthenticated limit.
    pub unauthenticated: Option<limits::PreLoginSlot>,
}

impl Admission {
    /// Completes when the connection, not yet logged in, lost its place to
    /// a newer one (the pre-login table was full); never after login.
    pub async fn evicted(&self) {
        match &self.unauthenticated {
            Some(slot) => slot.evicted().await,
            None => std::future::pending().await,
        }
    }
}

impl<S: Store, P: PassDb> Shared<S, P> {
    /// Bundles what sessions share.
    pub fn new(store: S, passdb: P, config: Config, tls: Option<Arc<tls::Tls>>) -> Self {
        Shared {
            store,
            passdb,
            hostname: hostname(),
            slots: limits::AddressSlots::new(config.limits.max_connections_per_address),
            lmtp_slots: limits::AddressSlots::new(config.lmtp.max_connections_per_address),
            lmtp_receiving: lmtp::MessageBudget::new(&config.lmtp),
            failures: limits::Failures::new(limits::FailurePolicy::from_config(&config.auth)),
            login_delay: limits::LoginDelay::new(Duration::from_secs(
                config.pop3.login_delay_secs.unwrap_or(0).into(),
            )),
            live: std::sync::RwLock::new(Arc::new(config.clone())),
            unauthenticated: limits::PreLogin::new(config.limits.max_unauthenticated),
            metrics: Arc::new(metrics::Metrics::with_certificates(
                tls.iter().map(|t| t.expiry()).collect(),
            )),
            tls,
            session_ids: AtomicU64::new(1),
            config,
        }
    }

    /// The configuration as last (re)loaded. Sessions take it once, at
    /// their start; listeners, the store and the TLS paths keep the
    /// configuration the server started with (`config`).
    pub fn live(&self) -> Arc<Config> {
        self.live.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// SIGHUP: takes a newly read configuration for everything that can
    /// change without a restart (limits, timeouts, the brute-force policy,
    /// LOGIN-DELAY, transcripts, quotas). Sessions already running keep
    /// what they started with; nothing is dropped.
    pub fn reload(&self, mut config: Config) {
        // Read at start: the password database folds names and the store
        // places maildrops as they did then, so the name rule that counts
        // failures and resolves spellings (auth/name.rs) must not change
        // under them.
        config.auth.case_insensitive_names = self.config.auth.case_insensitive_names;
        config
            .store
            .default_domain
            .clone_from(&self.config.store.default_domain);
        self.slots
            .set_max(config.limits.max_connections_per_address);
        self.lmtp_slots
            .set_max(config.lmtp.max_connections_per_address);
        self.unauthenticated
            .set_max(config.limits.max_unauthenticated);
        self.failures
            .set_policy(limits::FailurePolicy::from_config(&config.auth));
        self.login_delay.set_delay(Duration::from_secs(
            config.pop3.login_delay_secs.unwrap_or(0).into(),
        ));
        *self.live.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(config);
    }

    /// Admits a connection from `ip` under the brute-force and per-address
    /// limits, or says why not (the line to turn it away with),
    /// and gives it a place among the connections not yet logged in
    /// (which may close an older one: see [`limits::PreLogin`]).
    pub fn admit(&self, ip: IpAddr) -> Result<Admission, Farewell> {
        if let Some(wait) = self.failures.blocked(ip, std::time::Instant::now()) {
            return Err(Farewell::AddressBlocked {
                seconds: wait.as_secs().max(1),
            });
        }
        let Some(slot) = self.slots.claim(ip) else {
            return Err(Farewell::AddressBusy);
        };
        Ok(Admission {
            _slot: slot,
            unauthenticated: Some(self.unauthenticated.claim(ip)),
        })
    }

    fn next_session_id(&self) -> u64 {
        self.session_ids.fetch_add(1, Ordering::Relaxed)
    }

    /// RFC 1939 §7: the APOP timestamp must differ for every greeting.
    fn apop_timestamp(&self, session: u64) -> String {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        format!(
            "<{}.{}.{}@{}>",
            std::process::id(),
            session,
            nanos,
            self.hostname
        )
    }

    /// Whether plaintext logins are allowed for a client at `ip` on an
    /// unencrypted connection.
    fn plaintext_allowed(config: &Config, ip: IpAddr) -> bool {
        config.auth.allow_plaintext
            || config
                .auth
                .trusted_networks
                .iter()
                .any(|net| net.contains(ip))
    }
}

/// This machine's host name, for greetings and APOP timestamps.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_graphic() && b != b'>'))
        .unwrap_or_else(|| "localhost".to_string())
}

/// Binds a listening TCP socket. An IPv6 socket takes IPv6 only
/// (`IPV6_V6ONLY`), whatever the system default, so that `0.0.0.0:110`
/// and `[::]:110` can both be listened on, as the example config does.
pub fn bind_tcp(addr: SocketAddr) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    // As std and tokio do on Unix: a restart can bind while old
    // connections linger in TIME_WAIT.
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    TcpListener::from_std(socket.into())
}

/// A bound server: POP3 and LMTP listeners.
pub struct Server<S, P> {
    /// Each POP3 listener, and whether it speaks implicit TLS.
    listeners: Vec<(TcpListener, bool)>,
    lmtp: Vec<lmtp::Listener>,
    metrics: Option<TcpListener>,
    shared: Arc<Shared<S, P>>,
}

impl<S: Store, P: PassDb> Server<S, P> {
    /// Loads the TLS certificate (if configured) and binds every
    /// `pop3.listen`, `pop3.listen_tls` and `lmtp.listen` address, the
    /// `lmtp.socket` and the `metrics.listen` address of the config.
    pub async fn bind(config: Config, store: S, passdb: P) -> std::io::Result<Self> {
        let tls = match &config.tls {
            Some(t) => Some(Arc::new(
                tls::Tls::load(&t.certificate, &t.key).map_err(std::io::Error::other)?,
            )),
            None => None,
        };
        let mut listeners = Vec::new();
        let plain = config.pop3.listen.iter().map(|a| (a, false));
        let implicit = config.pop3.listen_tls.iter().map(|a| (a, true));
        for (addr, implicit_tls) in plain.chain(implicit) {
            let listener = bind_tcp(*addr).map_err(|e| {
                std::io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}"))
            })?;
            listeners.push((listener, implicit_tls));
        }
        let mut lmtp = Vec::new();
        for addr in &config.lmtp.listen {
            let listener = bind_tcp(*addr).map_err(|e| {
                std::io::Error::new(e.kind(), format!("cannot listen for LMTP on {addr}: {e}"))
            })?;
            lmtp.push(lmtp::Listener::Tcp(listener));
        }
        if let Some(path) = &config.lmtp.socket {
            lmtp.push(lmtp::bind_unix(path)?);
        }
        let metrics = match config.metrics.listen {
            Some(addr) => Some(bind_tcp(addr).map_err(|e| {
                std::io::Error::new(e.kind(), format!("cannot serve metrics on {addr}: {e}"))
            })?),
            None => None,
        };
        Ok(Server {
            listeners,
            lmtp,
            metrics,
            shared: Arc::new(Shared::new(store, passdb, config, tls)),
        })
    }

    /// The plain POP3 addresses actually bound (port 0 resolved).
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.addrs(false)
    }

    /// The implicit-TLS addresses actually bound.
    pub fn local_tls_addrs(&self) -> Vec<SocketAddr> {
        self.addrs(true)
    }

    fn addrs(&self, implicit_tls: bool) -> Vec<SocketAddr> {
        self.listeners
            .iter()
            .filter(|(_, t)| *t == implicit_tls)
            .filter_map(|(l, _)| l.local_addr().ok())
            .collect()
    }

    /// The metrics endpoint's address, when configured.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// The LMTP TCP addresses actually bound (port 0 resolved).
    pub fn lmtp_addrs(&self) -> Vec<SocketAddr> {
        self.lmtp
            .iter()
            .filter_map(|l| match l {
                lmtp::Listener::Tcp(l) => l.local_addr().ok(),
                lmtp::Listener::Unix(..) => None,
            })
            .collect()
    }

    /// What the sessions share, for reloading (SIGHUP).
    pub fn shared(&self) -> Arc<Shared<S, P>> {
        self.shared.clone()
    }

    /// The TLS settings, for reloading the certificate (SIGHUP).
    pub fn tls(&self) -> Option<Arc<tls::Tls>> {
        self.shared.tls.clone()
    }

    /// Serves until `shutdown` is cancelled, then stops accepting, tells
    /// waiting sessions that the server is going away, and returns when
    /// they have ended (or the grace period is over).
    pub async fn run(self, shutdown: CancellationToken) {
        let tracker = TaskTracker::new();
        let permits = Arc::new(Semaphore::new(self.shared.config.limits.max_connections));
        let workers = match workers::Workers::per_core() {
            Ok(w) => Some(Arc::new(w)),
            Err(e) => {
                warn!(error = %e, "cannot start session threads; sessions share the main runtime");
                None
            }
        };
        for (listener, implicit_tls) in self.listeners {
            let shared = self.shared.clone();
            let permits = permits.clone();
            let shutdown = shutdown.clone();
            let sessions = tracker.clone();
            let workers = workers.clone();
            tracker.spawn(async move {
                accept_loop(
                    listener,
                    implicit_tls,
                    shared,
                    permits,
                    shutdown,
                    sessions,
                    workers,
                )
                .await
            });
        }
        if let Some(listener) = self.metrics {
            tracker.spawn(metrics::serve(
                listener,
                self.shared.metrics.clone(),
                shutdown.clone(),
            ));
        }
        // LMTP has its own connection cap: neither protocol's clients can
        // take the other's connections.
        let lmtp_permits = Arc::new(Semaphore::new(self.shared.config.lmtp.max_connections));
        for listener in self.lmtp {
            let shared = self.shared.clone();
            let permits = lmtp_permits.clone();
            let shutdown = shutdown.clone();
            let sessions = tracker.clone();
            tracker.spawn(async move {
                lmtp::accept_loop(listener, shared, permits, shutdown, sessions).await
            });
        }
        shutdown.cancelled().await;
        tracker.close();
        if tokio::time::timeout(SHUTDOWN_GRACE, tracker.wait())
            .await
            .is_err()
        {
            warn!("sessions still open after the shutdown grace period; dropping them uncommitted");
        }
    }
}

async fn accept_loop<S: Store, P: PassDb>(
    listener: TcpListener,
    implicit_tls: bool,
    shared: Arc<Shared<S, P>>,
    permits: Arc<Semaphore>,
    shutdown: CancellationToken,
    sessions: TaskTracker,
    workers: Option<Arc<workers::Workers>>,
) {
    let local = listener.local_addr().ok();
    info!(listen = ?local, implicit_tls, "accepting POP3 connections");
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.cancelled() => return,
        };
        let (stream, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                // Out of file descriptors and the like: back off briefly
                // instead of spinning.
                warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let accepted = tokio::time::Instant::now();
        let permit = permits.clone().try_acquire_owned().ok();
        // The client's slots are claimed now, before any handshake, so
        // that sockets that never finish one count against their address.
        // Behind a trusted balancer the address comes from the PROXY
        // header: those wait for it.
        let proxied = shared
            .config
            .pop3
            .proxy_from
            .iter()
            .any(|n| n.contains(peer.ip()));
        let admitted = if proxied {
            None
        } else {
            match shared.admit(peer.ip()) {
                Ok(a) => Some(a),
                Err(why) => {
                    shared.metrics.connection_refused();
                    refuse(&stream, peer, why, implicit_tls);
                    continue;
                }
            }
        };
        // Every connection is taken: one still waiting to log in gives
        // way, as when the pre-login table is full, so that connections
        // that never log in cannot hold every permit. Only when none is
        // waiting (all are logged in) is the newcomer refused.
        if permit.is_none()
            && !proxied
            && !shared
                .unauthenticated
                .make_room(admitted.as_ref().and_then(|a| a.unauthenticated.as_ref()))
        {
            refuse(&stream, peer, Farewell::Busy, implicit_tls);
            continue;
        }
        let permits = permits.clone();
        let shared = shared.clone();
        let shutdown = shutdown.clone();
        let id = shared.next_session_id();
        let span = info_span!("session", id, peer = %peer, client = tracing::field::Empty);
        // The socket leaves this event loop here and joins the one of the
        // runtime the session runs on (a session thread's) in the session.
        let incoming = match stream.into_std() {
            Ok(std) => std,
            Err(e) => {
                warn!(error = %e, "cannot hand the connection to a session thread");
                continue;
            }
        };
        let session = sessions.track_future(
            async move {
                // into_std left it non-blocking, as from_std needs.
                let mut stream = match TcpStream::from_std(incoming) {
                    Ok(s) => s,
                    Err(e) => {
                        warn!(error = %e, "cannot register the connection");
                        return;
                    }
                };
                let mut peer = peer;
                let admission = match admitted {
                    Some(a) => a,
                    None => {
                        match proxy::read_header(&mut stream).await {
                            Ok(proxy::Header::Proxied { source, .. }) => {
                                tracing::Span::current()
                                    .record("client", tracing::field::display(source));
                                peer = source;
                            }
                            Ok(proxy::Header::Local) => {}
                            Err(e) => {
                                warn!(error = %e, "bad PROXY header from a trusted balancer; closing");
                                return;
                            }
                        }
                        match shared.admit(peer.ip()) {
                            Ok(a) if permit.is_some()
                                || shared.unauthenticated.make_room(a.unauthenticated.as_ref()) => a,
                            Ok(_) => {
                                refuse(&stream, peer, Farewell::Busy, implicit_tls);
                                return;
                            }
                            Err(why) => {
                                shared.metrics.connection_refused();
                                refuse(&stream, peer, why, implicit_tls);
                                return;
                            }
                        }
                    }
                };
                let permit = match permit {
                    Some(p) => p,
                    None => match permit_freed(permits, &admission).await {
                        Some(p) => p,
                        None => {
                            refuse(&stream, peer, Farewell::Busy, implicit_tls);
                            return;
                        }
                    },
                };
                // The handshake counts against the authorization deadline,
                // and a connection still in it can be closed to make room.
                let login_by = accepted
                    + Duration::from_secs(shared.live().limits.authorization_timeout_secs);
                let stream = match (implicit_tls, &shared.tls) {
                    (false, _) => Some(tls::Stream::Plain(stream)),
                    (true, Some(t)) => {
                        let mut s = tls::Stream::Plain(stream);
                        let until = login_by.min(accepted + HANDSHAKE_TIMEOUT);
                        let handshake = tokio::select! {
                            r = tokio::time::timeout_at(until, s.start_tls(t.acceptor())) => r,
                            _ = admission.evicted() => {
                                info!("closed during the TLS handshake to make room for a newer connection");
                                Ok(Err(std::io::Error::other("evicted")))
                            }
                        };
                        match handshake {
                            Ok(Ok(())) => Some(s),
                            Ok(Err(e)) => {
                                info!(error = %e, "TLS handshake failed");
                                None
                            }
                            Err(_) => {
                                info!("TLS handshake timed out");
                                None
                            }
                        }
                    }
                    (true, None) => None,
                };
                if let Some(stream) = stream {
                    pop3::serve(stream, peer, id, &shared, &shutdown, admission, accepted).await;
                }
                drop(permit);
            }
            .instrument(span),
        );
        match &workers {
            Some(w) => w.spawn(session),
            None => drop(tokio::spawn(session)),
        }
    }
}

/// The permit a connection closed to make room gives back, unless this
/// connection loses its own place first or the permit does not come soon.
async fn permit_freed(
    permits: Arc<Semaphore>,
    admission: &Admission,
) -> Option<OwnedSemaphorePermit> {
    tokio::select! {
        p = tokio::time::timeout(PERMIT_WAIT, permits.acquire_owned()) => p.ok()?.ok(),
        _ = admission.evicted() => None,
    }
}

/// Turns a connection away, telling it why if the line can be written at
/// once: a refusal never waits on the client. Implicit-TLS connections are
/// closed without a word (no handshake is spent on them).
fn refuse(stream: &TcpStream, peer: SocketAddr, why: Farewell, implicit_tls: bool) {
    warn!(peer = %peer, reason = %why, "connection refused");
    if !implicit_tls {
        let _ = stream.try_write(&why.line());
    }
}
