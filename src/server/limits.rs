//! Connection limits and brute-force defences shared by all sessions.
//!
//! - [`AddressSlots`] counts open connections per client address, so one
//!   address cannot take every connection. An address is [`address_key`]:
//!   an IPv6 /64 counts as one address, as one host usually holds all of it.
//! - [`PreLogin`] holds the connections not yet logged in. It never turns
//!   a connection away: when full, it closes the oldest pre-login
//!   connection of the address that holds the most (counting first the
//!   address's neighbours, [`network_key`]), so idle sockets from a few
//!   addresses, or from many addresses of one network, cannot lock
//!   everyone else out, and among equals the newest connection (a person
//!   in the middle of logging in) is closed last.
//! - [`Failures`] remembers failed logins per client address and per user
//!   name for a window of time: each failure makes the next answer slower
//!   (exponential back-off), and an address with too many failures is
//!   refused outright for a while. A user is never locked out, only
//!   slowed, so an attacker cannot lock a real user out of their mail.
//!   Every credential check is an [`Attempt`], counted before it is
//!   evaluated, so parallel guesses cannot outrun the count; a success
//!   forgets only its own user's failures from its address.
//! - [`LoginDelay`] enforces RFC 2449 LOGIN-DELAY when configured.
//!
//! Every table is bounded: at capacity, expired entries go first, then the
//! oldest. The locks are held for a map lookup only, once per connection
//! or login, never per command.

use std::cmp::Reverse;
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::hash::Hash;
use std::net::IpAddr;
use std::net::Ipv6Addr;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::config::AuthConfig;

/// Entries each table holds at most.
const MAX_ENTRIES: usize = 100_000;

fn locked<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The tables hold plain counters; a panic elsewhere leaves them usable.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The address a client is counted under: an IPv4 address as it is (an
/// IPv4-mapped IPv6 address as its IPv4 address), an IPv6 address as its
/// /64 network, which one host or one customer usually holds whole.
pub fn address_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

/// The network an address ([`address_key`]) belongs to, for choosing
/// which connection waiting to log in gives way: an IPv4 /24, an IPv6
/// /48, the blocks one customer or one attacker usually holds whole.
pub fn network_key(ip: IpAddr) -> IpAddr {
    match address_key(ip) {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            IpAddr::V4(std::net::Ipv4Addr::new(a, b, c, 0))
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], 0, 0, 0, 0, 0))
        }
    }
}

/// Open connections per client address ([`address_key`]).
#[derive(Debug)]
pub struct AddressSlots {
    max_per_address: AtomicU32,
    open: Mutex<HashMap<IpAddr, u32>>,
}

/// One connection's claim on its address's slots; released on drop.
#[derive(Debug)]
pub struct AddressSlot {
    slots: Arc<AddressSlots>,
    ip: IpAddr,
}

impl AddressSlots {
    /// At most `max_per_address` connections from one address at once.
    pub fn new(max_per_address: u32) -> Arc<Self> {
        Arc::new(AddressSlots {
            max_per_address: AtomicU32::new(max_per_address),
            open: Mutex::new(HashMap::new()),
        })
    }

    /// Claims a slot for `ip`, or `None` when the address is at its limit.
    pub fn claim(self: &Arc<Self>, ip: IpAddr) -> Option<AddressSlot> {
        let ip = address_key(ip);
        let mut open = locked(&self.open);
        let n = open.entry(ip).or_insert(0);
        if *n >= self.max_per_address.load(Relaxed) {
            return None;
        }
        *n += 1;
        Some(AddressSlot {
            slots: self.clone(),
            ip,
        })
    }

    /// Changes the limit (on reload); connections already open stay.
    pub fn set_max(&self, max_per_address: u32) {
        self.max_per_address.store(max_per_address, Relaxed);
    }

    /// Connections open from `ip` now.
    pub fn open_from(&self, ip: IpAddr) -> u32 {
        locked(&self.open)
            .get(&address_key(ip))
            .copied()
            .unwrap_or(0)
    }
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut open = locked(&self.slots.open);
        if let Some(n) = open.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// The connections not yet logged in, oldest first per address.
#[derive(Debug)]
pub struct PreLogin {
    max: AtomicUsize,
    table: Mutex<PreLoginTable>,
}

/// An address's standing when choosing who gives way: places it holds,
/// then its oldest connection first (the higher rank gives way first).
type AddressRank = (usize, Reverse<u64>, IpAddr);

/// A network's standing: places it holds, then its highest address rank.
type NetworkRank = (usize, AddressRank, IpAddr);

type Waiting = VecDeque<(u64, CancellationToken)>;

#[derive(Debug, Default)]
struct Network {
    held: usize,
    addresses: BTreeSet<AddressRank>,
}

/// The connections waiting to log in, with ordered indexes so that the
/// one to close is found in logarithmic time, however many addresses a
/// flood comes from (the table is consulted at every accept).
#[derive(Debug, Default)]
struct PreLoginTable {
    next_id: u64,
    total: usize,
    by_address: HashMap<IpAddr, Waiting>,
    /// Per [`network_key`].
    by_network: HashMap<IpAddr, Network>,
    ranked: BTreeSet<NetworkRank>,
}

fn address_rank(key: IpAddr, q: &Waiting) -> Option<AddressRank> {
    q.front().map(|(id, _)| (q.len(), Reverse(*id), key))
}

fn network_rank(key: IpAddr, n: &Network) -> Option<NetworkRank> {
    n.addresses.last().map(|best| (n.held, *best, key))
}

impl PreLoginTable {
    /// Applies `change` to the connections of address `key`, keeping the
    /// counts and indexes in step.
    fn update<R>(&mut self, key: IpAddr, change: impl FnOnce(&mut Waiting) -> R) -> R {
        let q = self.by_address.entry(key).or_default();
        let (old_rank, old_len) = (address_rank(key, q), q.len());
        let r = change(q);
        let (new_rank, new_len) = (address_rank(key, q), q.len());
        if q.is_empty() {
            self.by_address.remove(&key);
        }
        let net_key = network_key(key);
        let net = self.by_network.entry(net_key).or_default();
        if let Some(rank) = network_rank(net_key, net) {
            self.ranked.remove(&rank);
        }
        if let Some(rank) = old_rank {
            net.addresses.remove(&rank);
        }
        if let Some(rank) = new_rank {
            net.addresses.insert(rank);
        }
        net.held = net.held + new_len - old_len;
        self.total = self.total + new_len - old_len;
        match network_rank(net_key, net) {
            Some(rank) => {
                self.ranked.insert(rank);
            }
            None => {
                self.by_network.remove(&net_key);
            }
        }
        r
    }

    /// The connection to close to make room, other than `except`: the
    /// oldest of the address holding the most places, in the network
    /// holding the most.
    fn choose(&self, except: Option<u64>) -> Option<(IpAddr, u64)> {
        for (_, _, net) in self.ranked.iter().rev() {
            let Some(network) = self.by_network.get(net) else {
                continue;
            };
            for (_, _, key) in network.addresses.iter().rev() {
                let found = self
                    .by_address
                    .get(key)
                    .and_then(|q| q.iter().find(|(id, _)| Some(*id) != except));
                if let Some((id, _)) = found {
                    return Some((*key, *id));
                }
            }
        }
        None
    }

    /// Closes one connection to make room (see [`Self::choose`]). False
    /// when there is none to close.
    fn evict(&mut self, except: Option<u64>) -> bool {
        let Some((key, id)) = self.choose(except) else {
            return false;
        };
        let token = self.update(key, |q| {
            let i = q.iter().position(|(i, _)| *i == id)?;
            q.remove(i).map(|(_, token)| token)
        });
        if let Some(token) = token {
            token.cancel();
        }
        true
    }
}

/// One connection's place among those not yet logged in; given up on
/// drop (at login, or when the connection ends).
#[derive(Debug)]
pub struct PreLoginSlot {
    table: Arc<PreLogin>,
    key: IpAddr,
    id: u64,
    evicted: CancellationToken,
}

impl PreLogin {
    /// At most `max` connections before login, all addresses together.
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(PreLogin {
            max: AtomicUsize::new(max.max(1)),
            table: Mutex::new(PreLoginTable::default()),
        })
    }

    /// Takes a place for a new connection from `ip`. When every place is
    /// taken, the oldest connection of the address holding the most
    /// places loses its place (its [`PreLoginSlot::evicted`] fires) and
    /// the new one takes it: a flood from a few addresses then closes its
    /// own connections, not those of everyone else.
    pub fn claim(self: &Arc<Self>, ip: IpAddr) -> PreLoginSlot {
        let key = address_key(ip);
        let max = self.max.load(Relaxed);
        let mut guard = locked(&self.table);
        let t = &mut *guard;
        while t.total >= max && t.evict(None) {}
        let id = t.next_id;
        t.next_id += 1;
        let evicted = CancellationToken::new();
        t.update(key, |q| q.push_back((id, evicted.clone())));
        PreLoginSlot {
            table: self.clone(),
            key,
            id,
            evicted,
        }
    }

    /// Changes the limit (on reload); connections over a lower limit are
    /// closed as new ones arrive.
    pub fn set_max(&self, max: usize) {
        self.max.store(max.max(1), Relaxed);
    }

    /// Connections not yet logged in, all addresses together.
    pub fn waiting(&self) -> usize {
        locked(&self.table).total
    }

    /// Closes one connection waiting to log in (other than `except`), as a
    /// full table does, to free what it holds for a newer one (a
    /// connection permit). False when no other connection is waiting.
    pub fn make_room(&self, except: Option<&PreLoginSlot>) -> bool {
        locked(&self.table).evict(except.map(|s| s.id))
    }
}

impl PreLoginSlot {
    /// Completes when this connection lost its place to a newer one and
    /// must close.
    pub async fn evicted(&self) {
        self.evicted.cancelled().await
    }

    /// Whether this connection lost its place.
    pub fn is_evicted(&self) -> bool {
        self.evicted.is_cancelled()
    }

    /// A future that completes on eviction and borrows nothing, for
    /// waits that outlive a borrow of the slot (a stalled write).
    pub fn evicted_owned(&self) -> tokio_util::sync::WaitForCancellationFutureOwned {
        self.evicted.clone().cancelled_owned()
    }
}

impl Drop for PreLoginSlot {
    fn drop(&mut self) {
        let mut t = locked(&self.table.table);
        let id = self.id;
        let held = t
            .by_address
            .get(&self.key)
            .is_some_and(|q| q.iter().any(|(i, _)| *i == id));
        // Unless evicted: its place was given away already.
        if held {
            t.update(self.key, |q| q.retain(|(i, _)| *i != id));
        }
    }
}

/// Brute-force policy.
#[derive(Debug, Clone)]
pub struct FailurePolicy {
    /// The delay before answering any failed login.
    pub base_delay: Duration,
    /// The longest back-off delay.
    pub max_delay: Duration,
    /// How long a failure is remembered.
    pub window: Duration,
    /// Failures from one address within the window before it is refused.
    pub max_per_address: u32,
    /// How long such an address is refused.
    pub block: Duration,
}

impl FailurePolicy {
    /// The brute-force policy of `[auth]`.
    pub fn from_config(auth: &AuthConfig) -> FailurePolicy {
        FailurePolicy {
            base_delay: Duration::from_millis(auth.failure_delay_ms),
            max_delay: Duration::from_millis(auth.max_failure_delay_ms),
            window: Duration::from_secs(auth.failure_window_secs),
            max_per_address: auth.max_failures_per_address,
            block: Duration::from_secs(auth.address_block_secs),
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Record {
    /// Failures, counting the attempts still being checked.
    failures: u32,
    /// Of those, the attempts still being checked (by address only).
    in_flight: u32,
    last: Instant,
    blocked_until: Option<Instant>,
}

impl Record {
    /// Failures whose checks have ended: only these block an address.
    fn settled(&self) -> u32 {
        self.failures.saturating_sub(self.in_flight)
    }
}

#[derive(Debug)]
struct Table<K> {
    map: HashMap<K, Record>,
}

impl<K: Hash + Eq + Clone> Table<K> {
    fn live(&mut self, key: &K, now: Instant, window: Duration) -> Option<&mut Record> {
        let expired = self.map.get(key).is_some_and(|r| {
            now.duration_since(r.last) > window && r.blocked_until.is_none_or(|b| b <= now)
        });
        if expired {
            self.map.remove(key);
        }
        self.map.get_mut(key)
    }

    fn record(&mut self, key: K, now: Instant, window: Duration) -> &mut Record {
        if !self.map.contains_key(&key) && self.map.len() >= MAX_ENTRIES {
            self.map.retain(|_, r| {
                now.duration_since(r.last) <= window || r.blocked_until.is_some_and(|b| b > now)
            });
            if self.map.len() >= MAX_ENTRIES {
                // Still full of live entries: forget the stalest one.
                if let Some(oldest) = self
                    .map
                    .iter()
                    .min_by_key(|(_, r)| r.last)
                    .map(|(k, _)| k.clone())
                {
                    self.map.remove(&oldest);
                }
            }
        }
        let _ = self.live(&key, now, window);
        self.map.entry(key).or_insert(Record {
            failures: 0,
            in_flight: 0,
            last: now,
            blocked_until: None,
        })
    }
}

/// Failed logins per address, per user, and per user from each address.
#[derive(Debug)]
pub struct Failures {
    policy: RwLock<FailurePolicy>,
    by_address: Mutex<Table<IpAddr>>,
    by_user: Mutex<Table<String>>,
    /// What a success may clear: only the failures of the user who
    /// logged in, from the address they logged in from.
    by_pair: Mutex<Table<(IpAddr, String)>>,
    /// Woken whenever an attempt is settled, for attempts that wait for
    /// room (see [`Refused::Busy`]).
    settled: tokio::sync::Notify,
}

/// One login attempt, counted as a failure of its address and user before
/// its credential is checked (see [`Failures::begin`]). Settle it with
/// [`Failures::failed`] or [`Failures::succeeded`]; one that is dropped
/// (the client hung up during the check, the password database was down)
/// stays counted.
#[derive(Debug)]
#[must_use = "an attempt is settled as failed or succeeded"]
pub struct Attempt {
    ip: IpAddr,
    user: String,
    /// The delay before answering it if it fails, from the counts it was
    /// reserved at.
    backoff: Duration,
    /// When it was counted against its address.
    at: Instant,
}

impl Attempt {
    /// The user name the attempt is for.
    pub fn user(&self) -> &str {
        &self.user
    }
}

/// The address failures are counted under: an IPv6 client's /64 (one
/// host can use every address in it), an IPv4 client (also when mapped
/// into IPv6) as itself.
fn guesser(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & !u128::from(u64::MAX)).into()),
        },
        v4 => v4,
    }
}

/// Why an attempt was not allowed: the address is refused for this long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Blocked(pub Duration);

/// Why an attempt may not be checked now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The address is refused for this long.
    Blocked(Blocked),
    /// The address's failures and the attempts it has in flight already
    /// reach the limit: this one is checked only once one of those is
    /// settled (a success makes room; failures block the address). Wait
    /// for [`Failures::settled`] and begin again.
    Busy,
}

impl Failures {
    /// Empty tables under `policy`.
    pub fn new(policy: FailurePolicy) -> Self {
        Failures {
            policy: RwLock::new(policy),
            by_address: Mutex::new(Table {
                map: HashMap::new(),
            }),
            by_user: Mutex::new(Table {
                map: HashMap::new(),
            }),
            by_pair: Mutex::new(Table {
                map: HashMap::new(),
            }),
            settled: tokio::sync::Notify::new(),
        }
    }

    /// Completes when an attempt is settled after this was called; an
    /// attempt refused as [`Refused::Busy`] waits on it (created before
    /// its `begin`, and enabled) and then begins again.
    pub fn settled(&self) -> tokio::sync::futures::Notified<'_> {
        self.settled.notified()
    }

    /// Whether `ip` is refused now, and for how much longer.
    pub fn blocked(&self, ip: IpAddr, now: Instant) -> Option<Duration> {
        let ip = guesser(ip);
        let mut t = locked(&self.by_address);
        let window = self.policy().window;
        let r = t.live(&ip, now, window)?;
        r.blocked_until
            .and_then(|b| b.checked_duration_since(now))
            .filter(|d| !d.is_zero())
    }

    /// Starts a login attempt by `ip` for `user`: refuses it if the
    /// address is blocked, and otherwise counts it as a failure *before*
    /// the credential is checked. So attempts in flight count against the
    /// limit: of any number of parallel guesses from one address, at most
    /// `max_per_address` (less the failures already counted) are checked
    /// at all. An attempt beyond that is [`Refused::Busy`]: it waits until
    /// one in flight is settled, rather than being refused, so that many
    /// people logging in at once from one address (an office behind NAT)
    /// are never taken for a guesser. Only settled failures block.
    pub fn begin(&self, ip: IpAddr, user: &str, now: Instant) -> Result<Attempt, Refused> {
        let ip = guesser(ip);
        let policy = self.policy();
        let window = policy.window;
        let by_ip = {
            let mut t = locked(&self.by_address);
            let r = t.record(ip, now, window);
            if let Some(left) = r
                .blocked_until
                .and_then(|b| b.checked_duration_since(now))
                .filter(|d| !d.is_zero())
            {
                return Err(Refused::Blocked(Blocked(left)));
            }
            if r.failures >= policy.max_per_address {
                if r.in_flight > 0 {
                    return Err(Refused::Busy);
                }
                // After a block ends, the failures are still remembered:
                // one more attempt is checked, and blocks again if it
                // fails. With no block behind it, the limit was lowered on
                // reload: block now.
                if r.blocked_until.is_none() {
                    r.blocked_until = Some(now + policy.block);
                    return Err(Refused::Blocked(Blocked(policy.block)));
                }
            }
            r.failures += 1;
            r.in_flight += 1;
            r.last = now;
            r.failures
        };
        let by_user = {
            let mut t = locked(&self.by_user);
            let r = t.record(user.to_string(), now, window);
            r.failures = r.failures.saturating_add(1);
            r.last = now;
            r.failures
        };
        Ok(Attempt {
            ip,
            user: user.to_string(),
            backoff: self.backoff(by_ip.max(by_user)),
            at: now,
        })
    }

    /// Ends `attempt`'s time in flight at its address; then blocks the
    /// address if its settled failures reach the limit.
    fn land(&self, attempt: &Attempt, now: Instant) {
        let policy = self.policy();
        let mut t = locked(&self.by_address);
        if let Some(r) = t.live(&attempt.ip, now, policy.window) {
            r.in_flight = r.in_flight.saturating_sub(1);
            if r.settled() >= policy.max_per_address && r.blocked_until.is_none_or(|b| b <= now) {
                r.blocked_until = Some(now + policy.block);
            }
        }
    }

    /// Settles `attempt` as failed (it is counted already) and returns how
    /// long to wait before answering it: the base delay, doubled for each
    /// earlier failure of the same address or user within the window,
    /// capped.
    pub fn failed(&self, attempt: Attempt, now: Instant) -> Duration {
        self.land(&attempt, now);
        self.settled.notify_waiters();
        let window = self.policy().window;
        let mut t = locked(&self.by_pair);
        let r = t.record((attempt.ip, attempt.user), now, window);
        // Dated when it was counted against the address, not when its
        // check ended (which a queue of checks can delay): the pair's
        // failures must leave the window no later than the address's.
        r.last = if r.failures == 0 {
            attempt.at
        } else {
            r.last.max(attempt.at)
        };
        r.failures = r.failures.saturating_add(1);
        attempt.backoff
    }

    /// Settles `attempt` as neither a success nor a failure: the password
    /// database could not be asked (`[SYS/TEMP]`), so no credential was
    /// checked, and the reservation [`begin`](Self::begin) counted is
    /// given back. A directory restart does not block the addresses and
    /// users who tried to log in during it.
    pub fn unavailable(&self, attempt: Attempt, now: Instant) {
        self.forgive(&attempt, 1, now);
    }

    /// Settles an attempt left unsettled (a SCRAM exchange the client
    /// cancelled) as a failure of its user, which that user's next
    /// success forgets.
    pub fn abandoned(&self, attempt: Option<Attempt>) {
        if let Some(attempt) = attempt {
            self.failed(attempt, Instant::now());
        }
    }

    /// A failure found without a reserved attempt (the core refused a
    /// credential by itself): counted now, whether or not the address is
    /// blocked. Returns the delay before answering it.
    pub fn failed_unreserved(&self, ip: IpAddr, user: &str, now: Instant) -> Duration {
        match self.begin(ip, user, now) {
            Ok(attempt) => self.failed(attempt, now),
            Err(Refused::Blocked(_)) => self.policy().max_delay,
            Err(Refused::Busy) => {
                // Counted all the same, above the limit: it was never
                // going to be checked.
                let policy = self.policy();
                let mut t = locked(&self.by_address);
                let r = t.record(guesser(ip), now, policy.window);
                r.failures = r.failures.saturating_add(1);
                r.last = now;
                if r.settled() >= policy.max_per_address {
                    r.blocked_until = Some(now + policy.block);
                }
                policy.max_delay
            }
        }
    }

    /// Settles `attempt` as a success: the failures of that user from
    /// that address are forgotten (a person who mistyped, then got it
    /// right), and nothing else. Failures for other users stay, so a
    /// client with an account of its own cannot log into it between
    /// guesses at another to keep its address from being blocked.
    pub fn succeeded(&self, attempt: Attempt, now: Instant) {
        let window = self.policy().window;
        // Only failures still remembered: those older than the window
        // have left the address's count already, and forgiving them again
        // would forgive guesses at other users.
        let earlier = {
            let mut pairs = locked(&self.by_pair);
            let pair = (attempt.ip, attempt.user.clone());
            let live = pairs.live(&pair, now, window).map_or(0, |r| r.failures);
            pairs.map.remove(&pair);
            live
        };
        // This attempt's own reservation, and the user's earlier failures.
        self.forgive(&attempt, earlier.saturating_add(1), now);
    }

    /// Ends `attempt`'s time in flight and takes `clear` failures (its own
    /// reservation among them) off its address and its user; an address
    /// whose settled failures fall below the limit is no longer blocked.
    fn forgive(&self, attempt: &Attempt, clear: u32, now: Instant) {
        let policy = self.policy();
        {
            let mut t = locked(&self.by_address);
            if let Some(r) = t.live(&attempt.ip, now, policy.window) {
                r.in_flight = r.in_flight.saturating_sub(1);
                r.failures = r.failures.saturating_sub(clear).max(r.in_flight);
                if r.settled() < policy.max_per_address {
                    r.blocked_until = None;
                }
                if r.failures == 0 {
                    t.map.remove(&attempt.ip);
                }
            }
        }
        {
            let mut t = locked(&self.by_user);
            if let Some(r) = t.live(&attempt.user, now, policy.window) {
                r.failures = r.failures.saturating_sub(clear);
                if r.failures == 0 {
                    t.map.remove(&attempt.user);
                }
            }
        }
        self.settled.notify_waiters();
    }

    /// The policy in force.
    pub fn policy(&self) -> FailurePolicy {
        self.policy
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Changes the policy (on reload); remembered failures stay.
    pub fn set_policy(&self, policy: FailurePolicy) {
        *self.policy.write().unwrap_or_else(|p| p.into_inner()) = policy;
    }

    fn backoff(&self, failures: u32) -> Duration {
        // The first three failures (a person mistyping) cost the base
        // delay; after that each one doubles it.
        let doublings = failures.saturating_sub(3).min(16);
        let policy = self.policy();
        policy
            .base_delay
            .saturating_mul(1 << doublings)
            .min(policy.max_delay.max(policy.base_delay))
    }
}

/// RFC 2449 LOGIN-DELAY: the time of each user's last login.
#[derive(Debug)]
pub struct LoginDelay {
    delay_millis: AtomicU64,
    last: Mutex<HashMap<String, Instant>>,
}

impl LoginDelay {
    /// Enforces at least `delay` between logins of one user; zero turns
    /// the check off.
    pub fn new(delay: Duration) -> Self {
        LoginDelay {
            delay_millis: AtomicU64::new(delay.as_millis() as u64),
            last: Mutex::new(HashMap::new()),
        }
    }

    /// Changes the delay (on reload); zero turns the check off.
    pub fn set_delay(&self, delay: Duration) {
        self.delay_millis.store(delay.as_millis() as u64, Relaxed);
    }

    /// Records a login of `user` at `now`, or says how long the user must
    /// still wait.
    pub fn check(&self, user: &str, now: Instant) -> Result<(), Duration> {
        let delay = Duration::from_millis(self.delay_millis.load(Relaxed));
        if delay.is_zero() {
            return Ok(());
        }
        let mut last = locked(&self.last);
        if let Some(t) = last.get(user) {
            let since = now.duration_since(*t);
            if since < delay {
                return Err(delay - since);
            }
        }
        if last.len() >= MAX_ENTRIES {
            last.retain(|_, t| now.duration_since(*t) < delay);
        }
        last.insert(user.to_string(), now);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// One failed login, as a session has it: begun, checked, failed.
    fn fail(f: &Failures, ip: IpAddr, user: &str, now: Instant) -> Duration {
        let attempt = f.begin(ip, user, now).expect("not blocked");
        f.failed(attempt, now)
    }

    fn policy() -> FailurePolicy {
        FailurePolicy {
            base_delay: Duration::from_secs(2),
            max_delay: Duration::from_secs(30),
            window: Duration::from_secs(600),
            max_per_address: 10,
            block: Duration::from_secs(300),
        }
    }

    #[test]
    fn address_slots_are_counted_and_released() {
        let slots = AddressSlots::new(2);
        let a = slots.claim(ip("192.0.2.1")).unwrap();
        let _b = slots.claim(ip("192.0.2.1")).unwrap();
        assert!(slots.claim(ip("192.0.2.1")).is_none());
        assert!(slots.claim(ip("192.0.2.2")).is_some());
        drop(a);
        assert_eq!(slots.open_from(ip("192.0.2.1")), 1);
        assert!(slots.claim(ip("192.0.2.1")).is_some());
    }

    #[test]
    fn an_ipv6_64_is_one_address_and_mapped_ipv4_is_ipv4() {
        let slots = AddressSlots::new(2);
        let _a = slots.claim(ip("2001:db8:1:2::1")).unwrap();
        let _b = slots.claim(ip("2001:db8:1:2:ffff::9")).unwrap();
        assert!(slots.claim(ip("2001:db8:1:2:abcd::1")).is_none());
        assert!(slots.claim(ip("2001:db8:1:3::1")).is_some());
        let _c = slots.claim(ip("192.0.2.7")).unwrap();
        let _d = slots.claim(ip("::ffff:192.0.2.7")).unwrap();
        assert!(slots.claim(ip("192.0.2.7")).is_none());
        assert_eq!(slots.open_from(ip("::ffff:192.0.2.7")), 2);
    }

    #[test]
    fn a_full_pre_login_table_closes_the_oldest_of_the_most_crowded_address() {
        let table = PreLogin::new(5);
        let flood: Vec<PreLoginSlot> = (0..3).map(|_| table.claim(ip("192.0.2.1"))).collect();
        let other: Vec<PreLoginSlot> = (0..2).map(|_| table.claim(ip("192.0.2.2"))).collect();
        assert_eq!(table.waiting(), 5);
        // Full: a newcomer takes the place of 192.0.2.1's oldest.
        let newcomer = table.claim(ip("198.51.100.1"));
        assert!(flood[0].is_evicted());
        assert!(!flood[1].is_evicted() && !other[0].is_evicted() && !other[1].is_evicted());
        assert_eq!(table.waiting(), 5);
        // The evicted connection ending gives nothing back twice.
        let mut flood = flood;
        drop(flood.remove(0));
        assert_eq!(table.waiting(), 5);
        // Now 192.0.2.1 and .2 hold two each; either gives way, never the
        // newcomer holding one.
        let _next = table.claim(ip("198.51.100.2"));
        assert!(!newcomer.is_evicted());
        assert_eq!(
            flood
                .iter()
                .chain(&other)
                .filter(|s| s.is_evicted())
                .count(),
            1
        );
        drop(newcomer);
        assert_eq!(table.waiting(), 4);
    }

    #[test]
    fn a_crowded_network_gives_way_first_and_among_equals_the_oldest() {
        let table = PreLogin::new(4);
        // Someone in the middle of logging in, alone in their network...
        let person = table.claim(ip("198.51.100.7"));
        // ...and a flood of one connection per address, from one /24:
        // every address holds one place, but the network holds the most.
        let mut flood = Vec::new();
        for i in 1..=40 {
            flood.push(table.claim(ip(&format!("192.0.2.{i}"))));
        }
        assert!(!person.is_evicted());
        assert_eq!(flood.iter().filter(|s| !s.is_evicted()).count(), 3);
        assert!(!flood[39].is_evicted() && flood[36].is_evicted());
        // Networks and addresses of equal weight: the oldest goes first,
        // the newest (the one still logging in) last.
        let table = PreLogin::new(3);
        let a = table.claim(ip("203.0.113.1"));
        let b = table.claim(ip("198.51.100.1"));
        let c = table.claim(ip("192.0.2.1"));
        let d = table.claim(ip("10.0.0.1"));
        assert!(a.is_evicted() && !b.is_evicted() && !c.is_evicted() && !d.is_evicted());
        let _e = table.claim(ip("10.1.0.1"));
        assert!(b.is_evicted() && !c.is_evicted() && !d.is_evicted());
        // An IPv6 /48 is one network.
        let table = PreLogin::new(3);
        let mut v6: Vec<_> = (1..=2)
            .map(|i| table.claim(ip(&format!("2001:db8:2:{i}::1"))))
            .collect();
        let person = table.claim(ip("2001:db8:1::1"));
        v6.extend((3..=5).map(|i| table.claim(ip(&format!("2001:db8:2:{i}::1")))));
        assert!(!person.is_evicted());
        assert!(v6[..3].iter().all(|s| s.is_evicted()));
        assert!(!v6[3].is_evicted() && !v6[4].is_evicted());
    }

    /// The indexes agree with a count from scratch, and the connection
    /// chosen is the one a scan of every address would choose.
    fn check(t: &PreLoginTable, except: Option<u64>) {
        let mut nets: HashMap<IpAddr, usize> = HashMap::new();
        for (key, q) in &t.by_address {
            assert!(!q.is_empty());
            *nets.entry(network_key(*key)).or_default() += q.len();
        }
        assert_eq!(t.total, nets.values().sum::<usize>());
        assert_eq!(t.by_network.len(), nets.len());
        assert_eq!(t.ranked.len(), nets.len());
        for (net, n) in &t.by_network {
            assert_eq!(n.held, nets[net]);
        }
        let scanned = t
            .by_address
            .iter()
            .filter_map(|(key, q)| {
                let (oldest, _) = q.iter().find(|(id, _)| Some(*id) != except)?;
                let rank = (nets[&network_key(*key)], q.len(), Reverse(*oldest));
                Some((rank, *key, *oldest))
            })
            .max_by_key(|(rank, key, _)| (*rank, network_key(*key), *key))
            .map(|(_, key, id)| (key, id));
        assert_eq!(t.choose(except), scanned);
    }

    #[test]
    fn the_indexes_follow_every_claim_drop_and_eviction() {
        let table = PreLogin::new(60);
        let mut held: Vec<PreLoginSlot> = Vec::new();
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..5000 {
            let r = next();
            match r % 4 {
                0 | 1 => {
                    let a = (r >> 8) % 4;
                    let b = (r >> 16) % 6;
                    held.push(table.claim(ip(&format!("10.0.{a}.{b}"))));
                }
                2 if !held.is_empty() => {
                    let i = (r >> 8) as usize % held.len();
                    drop(held.swap_remove(i));
                }
                _ => {
                    let except = held.last();
                    let was = except.is_some_and(|s| s.is_evicted());
                    table.make_room(except);
                    if let Some(s) = except {
                        assert_eq!(s.is_evicted(), was);
                    }
                }
            }
            let t = locked(&table.table);
            check(&t, None);
            check(&t, held.last().map(|s| s.id));
            assert!(t.total <= 60);
        }
        drop(held);
        assert_eq!(table.waiting(), 0);
        assert!(locked(&table.table).ranked.is_empty());
    }

    #[test]
    fn making_room_closes_another_connection_never_the_asking_one() {
        let table = PreLogin::new(10);
        let old = table.claim(ip("192.0.2.1"));
        let asking = table.claim(ip("192.0.2.1"));
        assert!(table.make_room(Some(&asking)));
        assert!(old.is_evicted() && !asking.is_evicted());
        assert_eq!(table.waiting(), 1);
        assert!(!table.make_room(Some(&asking)));
        assert!(!asking.is_evicted());
        drop(old);
        assert_eq!(table.waiting(), 1);
        assert!(table.make_room(None));
        assert!(asking.is_evicted());
        drop(asking);
        assert_eq!(table.waiting(), 0);
        assert!(locked(&table.table).by_network.is_empty());
    }

    #[test]
    fn failures_back_off_and_then_block_the_address() {
        let f = Failures::new(policy());
        let t0 = Instant::now();
        let a = ip("192.0.2.1");
        let delays: Vec<u64> = (0..6)
            .map(|i| fail(&f, a, &format!("u{i}"), t0).as_secs())
            .collect();
        assert_eq!(delays, vec![2, 2, 2, 4, 8, 16]);
        assert!(f.blocked(a, t0).is_none());
        for _ in 6..10 {
            fail(&f, a, "x", t0);
        }
        assert_eq!(f.blocked(a, t0), Some(Duration::from_secs(300)));
        assert!(f.blocked(ip("192.0.2.2"), t0).is_none());
        assert!(f.blocked(a, t0 + Duration::from_secs(301)).is_none());
    }

    #[test]
    fn a_check_the_passdb_could_not_make_is_not_a_failure() {
        let f = Failures::new(policy());
        let t0 = Instant::now();
        let a = ip("192.0.2.7");
        // More unanswered attempts than the address may fail.
        for _ in 0..20 {
            let attempt = f.begin(a, "alice", t0).unwrap();
            f.unavailable(attempt, t0);
        }
        assert!(f.blocked(a, t0).is_none());
        // Real failures still count from zero: the first ones cost the
        // base delay, the tenth blocks.
        assert_eq!(fail(&f, a, "alice", t0), Duration::from_secs(2));
        for _ in 1..10 {
            fail(&f, a, "alice", t0);
        }
        assert!(f.blocked(a, t0).is_some());
    }

    #[test]
    fn one_user_guessed_from_many_addresses_is_slowed() {
        let f = Failures::new(policy());
        let t0 = Instant::now();
        let mut last = Duration::ZERO;
        for i in 0..8 {
            last = fail(&f, ip(&format!("198.51.100.{i}")), "alice", t0);
        }
        assert_eq!(last, Duration::from_secs(30));
        // Other users are not slowed by alice's attackers.
        assert_eq!(
            fail(&f, ip("198.51.100.99"), "bob", t0),
            Duration::from_secs(2)
        );
    }

    #[test]
    fn failures_expire_and_success_clears_that_users_failures() {
        let f = Failures::new(policy());
        let t0 = Instant::now();
        let a = ip("192.0.2.1");
        for _ in 0..5 {
            fail(&f, a, "u", t0);
        }
        let later = t0 + Duration::from_secs(601);
        assert_eq!(fail(&f, a, "v", later), Duration::from_secs(2));
        fail(&f, a, "w", later);
        fail(&f, a, "w", later);
        // w mistyped twice, then got it right: w's failures go.
        let ok = f.begin(a, "w", later).unwrap();
        f.succeeded(ok, later);
        assert_eq!(locked(&f.by_address).map[&a].failures, 1);
        assert_eq!(fail(&f, a, "z", later), Duration::from_secs(2));
    }

    #[test]
    fn attempts_in_flight_count_before_they_are_checked() {
        let f = Failures::new(policy());
        let t0 = Instant::now();
        let a = ip("192.0.2.1");
        // 100 guesses arrive at once: only the first ten may be checked;
        // the others wait for room.
        let begun: Vec<_> = (0..100).map(|_| f.begin(a, "alice", t0)).collect();
        assert_eq!(
            begun
                .iter()
                .filter(|b| b.as_ref().err() == Some(&Refused::Busy))
                .count(),
            90
        );
        let allowed: Vec<Attempt> = begun.into_iter().filter_map(Result::ok).collect();
        assert_eq!(allowed.len(), 10);
        // Attempts in flight block nobody: they may all be right.
        assert_eq!(f.blocked(a, t0), None);
        for attempt in allowed {
            f.failed(attempt, t0);
        }
        // Ten settled failures block the address, waiting attempts too.
        assert_eq!(f.blocked(a, t0), Some(Duration::from_secs(300)));
        assert!(matches!(f.begin(a, "alice", t0), Err(Refused::Blocked(_))));
        // Another address is not affected.
        assert!(f.begin(ip("192.0.2.2"), "alice", t0).is_ok());
    }

    #[test]
    fn a_login_to_ones_own_account_does_not_clear_guesses_at_others() {
        let f = Failures::new(policy());
        let t0 = Instant::now();
        let a = ip("192.0.2.1");
        let mut guesses = 0;
        // Guess at bob, log into mallory's own account, guess again...
        while let Ok(attempt) = f.begin(a, "bob", t0) {
            f.failed(attempt, t0);
            guesses += 1;
            if let Ok(own) = f.begin(a, "mallory", t0) {
                f.succeeded(own, t0);
            }
            assert!(guesses <= 10, "the address is never blocked");
        }
        assert_eq!(guesses, 10);
        assert!(f.blocked(a, t0).is_some());
    }

    #[test]
    fn a_success_forgives_no_failures_the_window_has_forgotten() {
        let f = Failures::new(policy());
        let t0 = Instant::now();
        let a = ip("192.0.2.1");
        // Failures at one's own account, long ago: they have expired.
        for _ in 0..9 {
            fail(&f, a, "mallory", t0);
        }
        let later = t0 + Duration::from_secs(601);
        for _ in 0..9 {
            fail(&f, a, "bob", later);
        }
        // The login that reaches the limit is one's own, and right.
        let own = f.begin(a, "mallory", later).unwrap();
        f.succeeded(own, later);
        // Only its own reservation is forgiven, not the nine guesses at
        // bob in exchange for failures that no longer count.
        assert_eq!(locked(&f.by_address).map[&a].failures, 9);
        fail(&f, a, "bob", later);
        assert!(f.blocked(a, later).is_some());
    }

    #[test]
    fn a_failure_settled_late_is_forgotten_with_the_address_count() {
        let f = Failures::new(policy());
        let t0 = Instant::now();
        let a = ip("192.0.2.1");
        // Nine failures at one's own account, counted at t0, their checks
        // held up in a queue for 100 s.
        let slow: Vec<Attempt> = (0..9).map(|_| f.begin(a, "mallory", t0).unwrap()).collect();
        for attempt in slow {
            f.failed(attempt, t0 + Duration::from_secs(100));
        }
        // The address forgets them 600 s after t0; so must the pair.
        let later = t0 + Duration::from_secs(601);
        for _ in 0..9 {
            fail(&f, a, "bob", later);
        }
        let own = f.begin(a, "mallory", later).unwrap();
        f.succeeded(own, later);
        assert_eq!(locked(&f.by_address).map[&a].failures, 9);
    }

    #[test]
    fn many_people_logging_in_at_once_from_one_address_wait_their_turn() {
        let f = Failures::new(policy());
        let t0 = Instant::now();
        let a = ip("192.0.2.1");
        // Fifty people behind one NAT address log in at once: ten are
        // checked, forty wait; each success makes room for one more, and
        // the address is never blocked.
        let mut waiting = 50;
        let mut in_flight = Vec::new();
        while waiting > 0 || !in_flight.is_empty() {
            while waiting > 0 {
                match f.begin(a, &format!("user{waiting}"), t0) {
                    Ok(attempt) => {
                        in_flight.push(attempt);
                        waiting -= 1;
                    }
                    Err(e) => {
                        assert_eq!(e, Refused::Busy);
                        break;
                    }
                }
            }
            assert!(in_flight.len() <= 10);
            assert_eq!(f.blocked(a, t0), None);
            f.succeeded(in_flight.pop().unwrap(), t0);
        }
        assert!(!locked(&f.by_address).map.contains_key(&a));
    }

    #[tokio::test]
    async fn a_waiting_attempt_is_woken_when_one_is_settled() {
        let f = Failures::new(policy());
        let t0 = Instant::now();
        let a = ip("192.0.2.1");
        let held: Vec<Attempt> = (0..10).map(|_| f.begin(a, "u", t0).unwrap()).collect();
        let settled = f.settled();
        tokio::pin!(settled);
        settled.as_mut().enable();
        assert_eq!(f.begin(a, "v", t0).err(), Some(Refused::Busy));
        let mut held = held.into_iter();
        f.succeeded(held.next().unwrap(), t0);
        // Woken at once, and there is room now.
        settled.await;
        assert!(f.begin(a, "v", t0).is_ok());
        for attempt in held {
            f.failed(attempt, t0);
        }
    }

    #[test]
    fn a_success_in_flight_does_not_leave_the_address_blocked() {
        let f = Failures::new(policy());
        let t0 = Instant::now();
        let a = ip("192.0.2.1");
        for _ in 0..9 {
            fail(&f, a, "x", t0);
        }
        // The tenth attempt fills the address's room while it is checked,
        // without blocking it; it was right.
        let attempt = f.begin(a, "alice", t0).unwrap();
        assert!(f.blocked(a, t0).is_none());
        assert_eq!(f.begin(a, "bob", t0).err(), Some(Refused::Busy));
        f.succeeded(attempt, t0);
        assert!(f.blocked(a, t0).is_none());
        // The next failure reaches the limit again.
        fail(&f, a, "x", t0);
        assert!(f.blocked(a, t0).is_some());
    }

    #[test]
    fn after_a_block_one_attempt_is_checked_then_the_address_is_blocked_again() {
        let f = Failures::new(policy());
        let t0 = Instant::now();
        let a = ip("192.0.2.1");
        for _ in 0..10 {
            fail(&f, a, "bob", t0);
        }
        let later = t0 + Duration::from_secs(301);
        assert!(f.blocked(a, later).is_none());
        let begun: Vec<_> = (0..5).map(|_| f.begin(a, "bob", later)).collect();
        assert_eq!(begun.iter().filter(|b| b.is_ok()).count(), 1);
        assert!(begun
            .iter()
            .filter_map(|b| b.as_ref().err())
            .all(|e| *e == Refused::Busy));
        let one = begun.into_iter().find_map(Result::ok).unwrap();
        f.failed(one, later);
        assert_eq!(f.blocked(a, later), Some(Duration::from_secs(300)));
    }

    #[test]
    fn an_ipv6_slash_64_counts_as_one_address() {
        let f = Failures::new(policy());
        let t0 = Instant::now();
        for i in 0..10 {
            fail(&f, ip(&format!("2001:db8:0:1::{i:x}")), "bob", t0);
        }
        assert!(f.blocked(ip("2001:db8:0:1:ffff::1"), t0).is_some());
        assert!(f.begin(ip("2001:db8:0:1::abcd"), "bob", t0).is_err());
        assert!(f.blocked(ip("2001:db8:0:2::1"), t0).is_none());
        fail(&f, ip("::ffff:192.0.2.7"), "bob", t0);
        assert_eq!(locked(&f.by_address).map[&ip("192.0.2.7")].failures, 1);
    }

    #[test]
    fn tables_stay_bounded() {
        let f = Failures::new(policy());
        let t0 = Instant::now();
        for i in 0..(MAX_ENTRIES as u32 + 10) {
            fail(
                &f,
                IpAddr::V4(i.into()),
                "u",
                t0 + Duration::from_micros(i as u64),
            );
        }
        assert!(locked(&f.by_address).map.len() <= MAX_ENTRIES);
    }

    #[test]
    fn login_delay_is_enforced_per_user() {
        let d = LoginDelay::new(Duration::from_secs(300));
        let t0 = Instant::now();
        assert!(d.check("alice", t0).is_ok());
        assert_eq!(
            d.check("alice", t0 + Duration::from_secs(100)),
            Err(Duration::from_secs(200))
        );
        assert!(d.check("bob", t0).is_ok());
        assert!(d.check("alice", t0 + Duration::from_secs(300)).is_ok());
        d.set_delay(Duration::ZERO);
        assert!(d.check("alice", t0 + Duration::from_secs(301)).is_ok());
    }
}
