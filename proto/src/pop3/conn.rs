//! The POP3 session state machine (RFC 1939 §§3–7, RFC 2449).
//!
//! ```text
//!   greeting ──> AUTHORIZATION ──USER/PASS, APOP──> (Authenticate) ──> (OpenMaildrop)
//!                  │   ^  wrong password: retry, up to a limit           │
//!                  │   └──────────── [IN-USE], [SYS/TEMP] ───────────────┤
//!                 QUIT                                                   v
//!                  │                                               TRANSACTION
//!                  v                          STAT LIST RETR TOP DELE RSET UIDL NOOP SUMMARY
//!                Closed <── (Commit) <── UPDATE <──────────── QUIT ──────┘
//! ```
//!
//! Bytes go in with [`Conn::receive`]; [`Conn::next`] yields what to do:
//! bytes to send, an [`Action`] for the driver to perform (authenticate,
//! open the maildrop, stream a message, commit deletions), a request for
//! more input, or the end of the session. The driver reports each action's
//! result with [`Conn::complete`]. The core never touches a socket, a file
//! or a clock; time limits are data it hands to the driver.
//!
//! Deletion happens only in UPDATE, entered by QUIT from TRANSACTION: a
//! session that ends any other way emits no [`Action::Commit`].
//!
//! In AUTHORIZATION, STLS (RFC 2595) answers `+OK`, drops whatever input
//! followed it, and asks for [`Action::StartTls`]; AUTH (RFC 5034) runs a
//! [`crate::sasl`] mechanism, during which lines are base64 responses
//! (longer ones allowed, `*` cancels) rather than commands. Plaintext
//! logins (USER/PASS, APOP, AUTH PLAIN and LOGIN) are offered and accepted
//! only when [`Settings::plaintext_auth`] says the connection may carry
//! them; UTF8 (RFC 6856) is accepted, and user names and passwords are
//! SASLprepped (RFC 4013).

use std::collections::VecDeque;
use std::io::Write as _;
use std::time::Duration;

use super::command::{self, Command, Index, MessageNumber, Offer, ParseError, Valid, Verb};
use super::response::{self, Code};
use crate::line::{LineEvent, LineReader};
use crate::sasl::{self, Exchange, Mechanism, Step};
use crate::secret::Secret;

use base64::prelude::{Engine as _, BASE64_STANDARD};

/// One message of the maildrop snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageInfo {
    /// The UIDL: 1 to 70 characters in 0x21..=0x7E, stable for the life of
    /// the message.
    pub uid: String,
    /// Octets that RETR sends before dot-stuffing (RFC 1939 §5, LIST).
    pub size: u64,
}

/// What a client presented to prove who it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential {
    /// A plaintext password (USER/PASS).
    Password(Secret<String>),
    /// RFC 1939 §7 APOP: the hex MD5 of the greeting's timestamp and the
    /// shared secret.
    Apop {
        /// The timestamp from the greeting, angle brackets included.
        timestamp: String,
        /// The client's digest.
        digest: Secret<String>,
    },
    /// RFC 2195 CRAM-MD5: the hex HMAC-MD5 of the challenge keyed by the
    /// shared secret.
    CramMd5 {
        /// The challenge the server sent.
        challenge: String,
        /// The client's lowercase hex digest.
        digest: Secret<String>,
    },
}

/// Per-connection policy and limits. Each limit says why it exists.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The RFC 1939 §7 APOP timestamp (`<...@host>`) for the greeting, or
    /// `None` when no user could log in with APOP.
    pub apop_timestamp: Option<String>,
    /// Whether USER/PASS and APOP may be used on this connection (TLS, a
    /// trusted network, or configuration allows plaintext).
    pub plaintext_auth: bool,
    /// Failed logins allowed before the connection is closed: a person may
    /// mistype, a guesser gets few tries per connection.
    pub max_auth_failures: u32,
    /// Unknown or malformed commands allowed before the connection is
    /// closed: a confused client should not loop forever.
    pub max_bad_commands: u32,
    /// RFC 2449 §4: a command line is at most 255 octets with its CRLF.
    pub max_line_octets: usize,
    /// RFC 2449 EXPIRE policy to advertise (`NEVER`, or days), if any.
    pub expire: Option<String>,
    /// RFC 2449 LOGIN-DELAY seconds to advertise, if any.
    pub login_delay_secs: Option<u32>,
    /// Idle time before login: short, so that idle sockets cannot pile up.
    pub authorization_timeout: Duration,
    /// RFC 1939 §3: the autologout timer is at least 10 minutes.
    pub transaction_timeout: Duration,
    /// Emit [`Event::Received`] for each command line, secrets redacted.
    pub transcript: bool,
    /// Whether STLS can be offered (a certificate is configured).
    pub tls_available: bool,
    /// Whether the connection is already encrypted (implicit TLS, or after
    /// STLS).
    pub tls_active: bool,
    /// The SASL mechanisms enabled; CAPA and AUTH offer those of them that
    /// are usable on the connection at the moment.
    pub sasl_mechanisms: Vec<Mechanism>,
    /// A unique RFC 2195 challenge for CRAM-MD5, or `None` when no user
    /// could log in with CRAM-MD5.
    pub cram_md5_challenge: Option<String>,
    /// Users who may log in to another user's maildrop by naming it as
    /// the SASL authorization identity (administrators, migration
    /// tools). Everyone else may only name themselves.
    pub master_users: Vec<String>,
    /// RFC 5034 §4: SASL responses may be longer than a command line;
    /// this bounds them (and the memory a client can make us hold).
    pub max_sasl_line_octets: usize,
    /// Whether bearer tokens can be checked (OAUTHBEARER, XOAUTH2); they
    /// are offered and accepted only while [`Settings::tls_active`].
    pub bearer_tokens: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            apop_timestamp: None,
            plaintext_auth: true,
            max_auth_failures: 3,
            max_bad_commands: 20,
            max_line_octets: 255,
            expire: None,
            login_delay_secs: None,
            authorization_timeout: Duration::from_secs(120),
            transaction_timeout: Duration::from_secs(600),
            transcript: false,
            tls_available: false,
            tls_active: false,
            sasl_mechanisms: Mechanism::ALL.to_vec(),
            cram_md5_challenge: None,
            master_users: Vec::new(),
            max_sasl_line_octets: 8192,
            bearer_tokens: false,
        }
    }
}

/// An effect the driver performs, then reports with [`Conn::complete`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Check a credential. Report [`Outcome::Authenticated`],
    /// [`Outcome::AuthRejected`] (after the failure delay) or
    /// [`Outcome::AuthUnavailable`].
    Authenticate {
        /// The user name as the client gave it.
        user: String,
        /// What the client presented.
        credential: Credential,
    },
    /// Lock the user's maildrop and snapshot it. Report
    /// [`Outcome::Opened`] or [`Outcome::OpenFailed`].
    OpenMaildrop {
        /// The canonical user name from authentication.
        user: String,
    },
    /// Send one message: open it; if that fails report
    /// [`Outcome::NotSent`] having written nothing. Otherwise write
    /// `status`, then the body through `dot::Stuffer` (whole, or TOP's
    /// header and `top_lines` body lines) and its terminator, then report
    /// [`Outcome::Sent`]. A failure after `status` went out cannot be
    /// reported on the wire: close the connection.
    Retrieve {
        /// The message, in the snapshot.
        index: Index,
        /// `None` for RETR; the line count for TOP.
        top_lines: Option<u64>,
        /// The `+OK` line to write before the body.
        status: Vec<u8>,
    },
    /// RFC 2595 §4: the `+OK` queued before this action must go out and
    /// be flushed first; then do the TLS handshake (under a timeout) and
    /// report [`Outcome::TlsStarted`], or close the connection if it fails.
    /// Input that arrived before the handshake has been discarded already.
    StartTls,
    /// SCRAM needs the user's stored keys and a random server nonce.
    /// Report [`Outcome::ScramKeys`] (with made-up keys for an unknown
    /// user, so that the exchange looks the same) or
    /// [`Outcome::AuthUnavailable`].
    ScramLookup {
        /// The SASLprepped user name.
        user: String,
    },
    /// OAUTHBEARER or XOAUTH2: check the bearer token. Report
    /// [`Outcome::Authenticated`] with the user the token names (which
    /// must be `user`, when the client named one), [`Outcome::AuthRejected`]
    /// (after the failure delay, counted as a failed login) or
    /// [`Outcome::AuthUnavailable`]. The token is a secret: never log it.
    CheckToken {
        /// The user the client named in the message, if any.
        user: Option<String>,
        /// The bearer token.
        token: Secret<String>,
    },
    /// The core found a login wrong by itself (a SCRAM proof that does not
    /// match): log it, wait the failure delay as for a wrong password, and
    /// report [`Outcome::AuthRejected`].
    Rejected {
        /// The user name the client gave.
        user: String,
    },
    /// RFC 1939 §6 UPDATE: delete `deleted`, mark `retrieved` as seen,
    /// release the maildrop. Report [`Outcome::Committed`] or
    /// [`Outcome::CommitFailed`].
    Commit {
        /// The messages marked with DELE, in order.
        deleted: Vec<Index>,
        /// The messages sent whole by RETR and not deleted, in order.
        retrieved: Vec<Index>,
    },
    /// SUMMARY: read each message and describe it in one line (number,
    /// octets, date, From, Subject, problems). Report
    /// [`Outcome::Summarized`] with the lines in the order of `indexes`, or
    /// [`Outcome::NotSent`] when the maildrop cannot be read at all.
    Summarize {
        /// The messages, in order, deleted ones left out.
        indexes: Vec<Index>,
    },
}

/// Why a store action failed, in the shapes the wire distinguishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreFailure {
    /// The maildrop is locked by another session.
    Locked,
    /// The message was removed by another program.
    Vanished,
    /// May succeed later.
    Temporary,
    /// Will not succeed by retrying.
    Permanent,
}

/// The result of an [`Action`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The credential is good; `user` is the canonical name.
    Authenticated {
        /// The user name as the password database stores it.
        user: String,
    },
    /// Wrong user name or secret.
    AuthRejected,
    /// The password database could not answer.
    AuthUnavailable,
    /// The maildrop is locked and snapshotted.
    Opened(Vec<MessageInfo>),
    /// The maildrop could not be opened.
    OpenFailed(StoreFailure),
    /// The message went out whole.
    Sent,
    /// The message could not be opened; nothing was written.
    NotSent(StoreFailure),
    /// UPDATE finished.
    Committed,
    /// UPDATE failed (some deletions may not have happened).
    CommitFailed(StoreFailure),
    /// The credential is good, but RFC 2449 LOGIN-DELAY forbids another
    /// login this soon.
    LoginDelayed {
        /// Seconds until a login is allowed.
        seconds: u64,
    },
    /// The TLS handshake after STLS succeeded.
    TlsStarted,
    /// SCRAM keys for [`Action::ScramLookup`].
    ScramKeys {
        /// The canonical user name (the name given, for an unknown user).
        user: String,
        /// The stored keys.
        keys: sasl::scram::ScramKeys,
        /// A fresh random nonce: printable ASCII without `,`.
        nonce: String,
    },
    /// The SUMMARY lines, one per message asked for (no CR or LF in them).
    Summarized(Vec<String>),
}

/// What the driver should do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Write these bytes (a whole response, or telnet option refusals).
    Send(Vec<u8>),
    /// Perform this action, then call [`Conn::complete`].
    Act(Action),
    /// A command line as received, with secrets replaced by `***`, for the
    /// session transcript (only when [`Settings::transcript`] is set).
    Received(Vec<u8>),
    /// A command line parsed as this command and is being answered now
    /// (for metrics: the time until the next event of this kind or
    /// [`Event::NeedInput`] is the command's latency).
    Command(Verb),
    /// Flush what was sent and read more input.
    NeedInput,
    /// Flush what was sent and close the connection.
    Close,
}

/// What the session did, for the log line at its end.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    /// Messages sent whole by RETR.
    pub retrieved: u64,
    /// Octets of those messages.
    pub retrieved_octets: u64,
    /// Messages removed by a successful UPDATE.
    pub deleted: u64,
    /// Octets of those messages.
    pub deleted_octets: u64,
    /// Messages left in the maildrop after the session.
    pub remaining: u64,
    /// Octets of those messages.
    pub remaining_octets: u64,
}

#[derive(Debug)]
enum State {
    Authorization {
        /// The name USER gave, for PASS to check.
        user: Option<String>,
    },
    /// An AUTH exchange is running: lines are SASL responses.
    Sasl(Sasl),
    Transaction(Transaction),
    Update,
    Closed,
}

/// An AUTH exchange, before and after it knows who is logging in.
#[derive(Debug)]
enum Sasl {
    /// The mechanism has not named a user the server knows yet.
    Running(Exchange),
    /// SCRAM has the user's keys: the client's proof settles the login.
    Proving { exchange: Exchange, login: Login },
}

/// Who is logging in: the user whose credential is checked, and the
/// maildrop a master user named as the SASL authorization identity.
#[derive(Debug, Clone)]
struct Login {
    user: String,
    acting_for: Option<String>,
}

impl Login {
    /// The maildrop to open once the credential is good.
    fn maildrop(self) -> String {
        self.acting_for.unwrap_or(self.user)
    }
}

/// A set of messages of the snapshot (those marked with DELE, those
/// sent whole), with their count and octets kept as they are marked.
/// Octets saturate: sizes come from the store, where a file name may
/// claim any size, and a total must not wrap.
#[derive(Debug)]
struct MessageSet {
    marked: Vec<bool>,
    count: usize,
    octets: u64,
}

impl MessageSet {
    fn new(messages: usize) -> Self {
        MessageSet {
            marked: vec![false; messages],
            count: 0,
            octets: 0,
        }
    }

    fn contains(&self, i: Index) -> bool {
        self.marked[i.get()]
    }

    /// Marks a message of `size` octets; false if it was marked already.
    fn insert(&mut self, i: Index, size: u64) -> bool {
        let marked = &mut self.marked[i.get()];
        if *marked {
            return false;
        }
        *marked = true;
        self.count += 1;
        self.octets = self.octets.saturating_add(size);
        true
    }

    fn clear(&mut self) {
        self.marked.iter_mut().for_each(|m| *m = false);
        self.count = 0;
        self.octets = 0;
    }

    fn len(&self) -> usize {
        self.count
    }

    fn octets(&self) -> u64 {
        self.octets
    }
}

#[derive(Debug)]
struct Transaction {
    /// The user whose maildrop is open.
    user: String,
    /// The snapshot taken at open.
    messages: Vec<MessageInfo>,
    /// Marked with DELE; removed at QUIT.
    deleted: MessageSet,
    /// Sent whole by RETR; marked as seen at QUIT.
    retrieved: MessageSet,
}

impl Transaction {
    fn new(user: String, messages: Vec<MessageInfo>) -> Self {
        let n = messages.len();
        Transaction {
            user,
            messages,
            deleted: MessageSet::new(n),
            retrieved: MessageSet::new(n),
        }
    }

    fn message(&self, i: Index) -> &MessageInfo {
        &self.messages[i.get()]
    }

    /// The messages not marked with DELE, in order.
    fn undeleted(&self) -> impl Iterator<Item = Index> + '_ {
        Index::all(self.messages.len()).filter(|&i| !self.deleted.contains(i))
    }

    /// RFC 1939 §5: messages marked as deleted are not counted. The sum
    /// saturates: sizes come from the store, where a file name may claim
    /// any size, and a total must not wrap.
    fn visible(&self) -> (usize, u64) {
        let octets = self
            .undeleted()
            .fold(0u64, |sum, i| sum.saturating_add(self.message(i).size));
        (self.messages.len() - self.deleted.len(), octets)
    }

    /// The one place where a message number becomes an index: range and
    /// deleted checks included (`RETR 0` can never mean message 1).
    fn index(&self, n: MessageNumber) -> Result<Index, Vec<u8>> {
        let Some(i) = Index::of(n, self.messages.len()) else {
            let count = self.messages.len();
            let text = match count {
                0 => format!("No such message: {n} (the maildrop is empty)"),
                1 => format!("No such message: {n} (there is 1 message)"),
                _ => format!("No such message: {n} (there are {count} messages, 1 to {count})"),
            };
            return Err(response::err(None, text));
        };
        if self.deleted.contains(i) {
            return Err(response::err(
                None,
                format!("Message {n} is already deleted"),
            ));
        }
        Ok(i)
    }
}

/// The action the driver is performing, with what its outcome needs.
#[derive(Debug, Clone)]
enum Pending {
    StartTls,
    /// The maildrop a master user named, for after the keys.
    ScramLookup {
        acting_for: Option<String>,
    },
    /// The maildrop a master user named, for after the check.
    Authenticate {
        acting_for: Option<String>,
    },
    /// A bearer token is being checked; the exchange stays open for
    /// RFC 7628's error status.
    Token,
    Open {
        user: String,
    },
    Retrieve {
        index: Index,
        whole: bool,
    },
    Commit {
        deleted: u64,
        deleted_octets: u64,
    },
    Summarize {
        count: usize,
    },
}

/// What the session asked of the store when it failed.
#[derive(Debug, Clone, Copy)]
enum StoreRequest {
    Open,
    Read(Index),
    Summarize,
    Commit,
}

/// One POP3 session's protocol state.
#[derive(Debug)]
pub struct Conn {
    settings: Settings,
    reader: LineReader,
    state: State,
    queue: VecDeque<Event>,
    pending: Option<Pending>,
    auth_failures: u32,
    bad_commands: u32,
    tally: Tally,
    /// RFC 6856: UTF8 was issued.
    utf8: bool,
    /// Whether the running login came from AUTH, for the error's hint.
    sasl_login: bool,
}

impl Conn {
    /// A new session; its greeting is the first event.
    pub fn new(settings: Settings) -> Self {
        let greeting = match &settings.apop_timestamp {
            Some(ts) => format!("mailbag POP3 server ready {ts}"),
            None => "mailbag POP3 server ready".to_string(),
        };
        let mut conn = Conn {
            reader: LineReader::new(settings.max_line_octets),
            settings,
            state: State::Authorization { user: None },
            queue: VecDeque::new(),
            pending: None,
            auth_failures: 0,
            bad_commands: 0,
            tally: Tally::default(),
            utf8: false,
            sasl_login: false,
        };
        conn.send(response::ok(greeting));
        conn
    }

    /// Feeds bytes read from the client.
    pub fn receive(&mut self, bytes: &[u8]) {
        self.reader.push(bytes);
    }

    /// How long the driver may wait for input in the current state.
    pub fn idle_timeout(&self) -> Duration {
        match self.state {
            State::Transaction(_) | State::Update => self.settings.transaction_timeout,
            _ => self.settings.authorization_timeout,
        }
    }

    /// Whether the session is in TRANSACTION (a maildrop is open).
    pub fn in_transaction(&self) -> bool {
        matches!(self.state, State::Transaction(_))
    }

    /// The user whose maildrop is open, once in TRANSACTION: the name the
    /// password database gave at authentication (or the maildrop a master
    /// user named), carried from the check to the open.
    pub fn user(&self) -> Option<&str> {
        match &self.state {
            State::Transaction(t) => Some(&t.user),
            _ => None,
        }
    }

    /// What the session did so far.
    pub fn tally(&self) -> Tally {
        self.tally
    }

    /// Whether the connection is encrypted (as far as the core knows).
    pub fn tls_active(&self) -> bool {
        self.settings.tls_active
    }

    /// Drops every byte received but not yet processed. RFC 2595 §4 and
    /// RFC 3207 §6: nothing a client sent before the TLS handshake may be
    /// taken as a command after it. The core does this itself at STLS;
    /// the driver may call it again for bytes it read later.
    pub fn discard_buffered_input(&mut self) {
        self.reader.discard_buffered();
    }

    /// Releases buffer capacity while the session waits for input.
    pub fn shrink(&mut self) {
        self.reader.shrink();
        self.queue.shrink_to_fit();
    }

    /// The next thing for the driver to do.
    // Not an Iterator: the sequence never ends (Close repeats), and
    // NeedInput is a pause that more input resumes, not an end.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> Event {
        loop {
            if let Some(event) = self.queue.pop_front() {
                return event;
            }
            if matches!(self.state, State::Closed) {
                return Event::Close;
            }
            if self.pending.is_some() {
                // The driver must complete the outstanding action first.
                return Event::NeedInput;
            }
            match self.reader.next_event() {
                None => return Event::NeedInput,
                Some(LineEvent::Telnet(reply)) => return Event::Send(reply),
                Some(LineEvent::TooLong) if matches!(self.state, State::Sasl(_)) => {
                    self.transcript(b"(SASL response too long)".to_vec());
                    let limit = self.settings.max_sasl_line_octets;
                    self.end_sasl();
                    self.send(response::err(
                        Some(Code::Auth),
                        format!("AUTH response too long (the limit is {limit} octets)"),
                    ));
                }
                Some(LineEvent::TooLong) => {
                    self.transcript(b"(line too long)".to_vec());
                    let limit = self.settings.max_line_octets;
                    self.bad_command(format!("Line too long (the limit is {limit} octets)"));
                }
                Some(LineEvent::Line(line)) => self.handle_line(&line),
            }
        }
    }

    /// Reports the result of the last [`Action`].
    pub fn complete(&mut self, outcome: Outcome) {
        let Some(pending) = self.pending.take() else {
            return;
        };
        match (pending, outcome) {
            (Pending::StartTls, Outcome::TlsStarted) => {
                self.reader.discard_buffered();
                // RFC 2595 §4: nothing learned in the clear carries over;
                // a USER given before the handshake is forgotten.
                self.state = State::Authorization { user: None };
                self.settings.tls_active = true;
                // RFC 2595 §4: TLS protects the password.
                self.settings.plaintext_auth = true;
            }
            // The driver closes after a failed handshake; nothing more may
            // be said in the clear either way.
            (Pending::StartTls, _) => self.state = State::Closed,
            (Pending::ScramLookup { acting_for }, Outcome::ScramKeys { user, keys, nonce }) => {
                let State::Sasl(Sasl::Running(mut exchange)) =
                    std::mem::replace(&mut self.state, State::Closed)
                else {
                    // A lookup is only asked for while an exchange runs.
                    self.state = State::Authorization { user: None };
                    return self.end_sasl();
                };
                let step = match &mut exchange {
                    Exchange::ScramSha256(m) => m.keys(keys, &nonce),
                    _ => Step::Failed(sasl::Failure::Malformed),
                };
                let login = Login { user, acting_for };
                self.state = State::Sasl(Sasl::Proving { exchange, login });
                self.sasl_step(step);
            }
            (Pending::ScramLookup { .. }, _) => {
                self.end_sasl();
                self.send(response::err(
                    Some(Code::SysTemp),
                    "Authentication is unavailable right now; try again later",
                ));
            }
            (Pending::Token, Outcome::Authenticated { user }) => {
                self.end_sasl();
                self.open(user);
            }
            (Pending::Token, Outcome::AuthRejected) => {
                let step = match &mut self.state {
                    State::Sasl(Sasl::Running(Exchange::OAuth(m))) => m.rejected(),
                    _ => sasl::Step::Failed(sasl::Failure::Malformed),
                };
                self.sasl_step(step);
            }
            (Pending::Token, _) => {
                self.end_sasl();
                self.send(response::err(
                    Some(Code::SysTemp),
                    "Authentication is unavailable right now; try again later",
                ));
            }
            (Pending::Authenticate { acting_for }, Outcome::Authenticated { user }) => {
                let user = Login { user, acting_for }.maildrop();
                self.open(user);
            }
            (Pending::Authenticate { .. }, Outcome::AuthUnavailable) => {
                self.state = State::Authorization { user: None };
                self.send(response::err(
                    Some(Code::SysTemp),
                    "Authentication is unavailable right now; try again later",
                ));
            }
            (
                Pending::Authenticate { .. } | Pending::Open { .. },
                Outcome::LoginDelayed { seconds },
            ) => {
                self.state = State::Authorization { user: None };
                let every = self.settings.login_delay_secs.unwrap_or(0);
                self.send(response::err(
                    Some(Code::LoginDelay),
                    format!("Only one login every {every} seconds; try again in {seconds} seconds"),
                ));
            }
            (Pending::Authenticate { .. }, _) => self.auth_failed(),
            (Pending::Open { user }, Outcome::Opened(messages)) => {
                let t = Transaction::new(user, messages);
                let (count, octets) = t.visible();
                self.state = State::Transaction(t);
                self.send(response::ok(format!(
                    "Logged in. Maildrop has {count} message{} ({octets} octets)",
                    plural(count)
                )));
            }
            (Pending::Open { .. }, outcome) => {
                self.state = State::Authorization { user: None };
                let failure = match outcome {
                    Outcome::OpenFailed(f) => f,
                    _ => StoreFailure::Temporary,
                };
                self.send(store_failed(StoreRequest::Open, failure));
            }
            (Pending::Retrieve { index, whole }, Outcome::Sent) => {
                if let State::Transaction(t) = &mut self.state {
                    let size = t.message(index).size;
                    if whole && t.retrieved.insert(index, size) {
                        self.tally.retrieved = t.retrieved.len() as u64;
                        self.tally.retrieved_octets = t.retrieved.octets();
                    }
                }
            }
            (Pending::Retrieve { index, .. }, outcome) => {
                let failure = match outcome {
                    Outcome::NotSent(f) => f,
                    _ => StoreFailure::Temporary,
                };
                self.send(store_failed(StoreRequest::Read(index), failure));
            }
            (
                Pending::Commit {
                    deleted,
                    deleted_octets,
                },
                Outcome::Committed,
            ) => {
                self.tally.deleted = deleted;
                self.tally.deleted_octets = deleted_octets;
                let left = self.tally.remaining;
                self.close_with(response::ok(format!(
                    "mailbag signing off ({left} message{} left)",
                    plural(left as usize)
                )));
            }
            (Pending::Commit { .. }, outcome) => {
                let failure = match outcome {
                    Outcome::CommitFailed(f) => f,
                    _ => StoreFailure::Temporary,
                };
                self.close_with(store_failed(StoreRequest::Commit, failure));
            }
            (Pending::Summarize { count }, Outcome::Summarized(lines)) => {
                let head = format!(
                    "{count} message{}: number, octets, date, From, Subject, problems",
                    plural(count)
                );
                self.send(response::multiline(head, lines));
            }
            (Pending::Summarize { .. }, outcome) => {
                let failure = match outcome {
                    Outcome::NotSent(f) => f,
                    _ => StoreFailure::Temporary,
                };
                self.send(store_failed(StoreRequest::Summarize, failure));
            }
        }
    }

    /// The credential is good: open `user`'s maildrop. Every way of
    /// logging in ends here.
    fn open(&mut self, user: String) {
        self.act(
            Pending::Open { user: user.clone() },
            Action::OpenMaildrop { user },
        );
    }

    fn send(&mut self, bytes: Vec<u8>) {
        self.queue.push_back(Event::Send(bytes));
    }

    fn close_with(&mut self, bytes: Vec<u8>) {
        self.send(bytes);
        self.state = State::Closed;
    }

    fn act(&mut self, pending: Pending, action: Action) {
        self.pending = Some(pending);
        self.queue.push_back(Event::Act(action));
    }

    fn transcript(&mut self, line: Vec<u8>) {
        if self.settings.transcript {
            self.queue.push_back(Event::Received(line));
        }
    }

    fn bad_command(&mut self, text: String) {
        self.bad_commands += 1;
        if self.bad_commands >= self.settings.max_bad_commands {
            self.close_with(response::err(
                None,
                format!("{text}. Too many bad commands; closing the connection"),
            ));
        } else {
            self.send(response::err(None, text));
        }
    }

    fn auth_failed(&mut self) {
        self.auth_failed_with("wrong user name or password");
    }

    fn auth_failed_with(&mut self, why: &str) {
        self.auth_failures += 1;
        self.end_sasl();
        self.state = State::Authorization { user: None };
        if self.auth_failures >= self.settings.max_auth_failures {
            self.close_with(response::err(
                Some(Code::Auth),
                format!(
                    "Authentication failed {} times; closing the connection",
                    self.auth_failures
                ),
            ));
        } else {
            let left = self.settings.max_auth_failures - self.auth_failures;
            let again = if self.sasl_login {
                "try AUTH again"
            } else {
                "start again with USER"
            };
            self.send(response::err(
                Some(Code::Auth),
                format!(
                    "Authentication failed: {why} ({left} attempt{} left; {again})",
                    plural(left as usize)
                ),
            ));
        }
    }

    fn handle_line(&mut self, line: &[u8]) {
        if matches!(self.state, State::Sasl(_)) {
            return self.sasl_response(line);
        }
        if self.settings.transcript {
            self.transcript(command::redact(line));
        }
        let command = match command::parse(line) {
            Ok(c) => c,
            Err(e) => {
                let text = self.parse_error_text(e);
                return self.bad_command(text);
            }
        };
        self.queue.push_back(Event::Command(command.verb()));
        match &self.state {
            State::Authorization { .. } | State::Transaction(_)
                if !self.valid_here(command.verb()) =>
            {
                self.misplaced(&command)
            }
            State::Authorization { .. } => self.authorization(command),
            State::Transaction(_) => self.transaction(command),
            // No commands are read in UPDATE or after the end.
            State::Update | State::Closed | State::Sasl(_) => {}
        }
    }

    /// The verbs valid in this state and offered on this connection, in
    /// the command table's order.
    fn valid_now(&self) -> Vec<Verb> {
        Verb::ALL
            .iter()
            .copied()
            .filter(|&verb| self.valid_here(verb) && self.offered(verb))
            .collect()
    }

    /// Whether the verb is a command of this state (RFC 1939 §3); one that
    /// is not is answered as misplaced.
    fn valid_here(&self, verb: Verb) -> bool {
        let authorization = matches!(self.state, State::Authorization { .. });
        match verb.valid() {
            Valid::Authorization(_) => authorization,
            Valid::Transaction => !authorization,
            Valid::Both => true,
        }
    }

    /// Whether a command of this state is listed as valid on this
    /// connection (its own handler still answers it when it is not).
    fn offered(&self, verb: Verb) -> bool {
        let Valid::Authorization(offer) = verb.valid() else {
            return true;
        };
        match offer {
            Offer::Always => true,
            Offer::Plaintext => self.settings.plaintext_auth,
            Offer::Apop => self.settings.plaintext_auth && self.settings.apop_timestamp.is_some(),
            Offer::Sasl => !self.usable_mechanisms().is_empty(),
            Offer::Stls => self.stls_offered(),
        }
    }

    fn valid_now_text(&self) -> String {
        let words: Vec<&str> = self.valid_now().iter().map(|v| v.keyword()).collect();
        format!("Valid now: {}", words.join(" "))
    }

    fn parse_error_text(&self, e: ParseError) -> String {
        let valid = self.valid_now_text();
        match e {
            ParseError::Empty => format!("Empty command. {valid}"),
            ParseError::InvalidBytes => {
                format!("Command contains invalid characters. {valid}")
            }
            ParseError::Unknown(word) => format!("Unknown command \"{word}\". {valid}"),
            ParseError::Usage(verb) => format!("Usage: {}", verb.syntax()),
            ParseError::BadNumber(verb) => format!(
                "Invalid message number: a number from 1 up is expected. Usage: {}",
                verb.syntax()
            ),
            ParseError::ArgTooLong(verb @ (Verb::User | Verb::Apop)) => format!(
                "Argument too long (a user name is at most {} octets, other arguments {} characters). Usage: {}",
                command::MAX_USER_NAME_OCTETS,
                command::MAX_ARG_CHARS,
                verb.syntax()
            ),
            ParseError::ArgTooLong(verb) => format!(
                "Argument too long (at most {} characters). Usage: {}",
                command::MAX_ARG_CHARS,
                verb.syntax()
            ),
        }
    }

    fn misplaced(&mut self, command: &Command) {
        let verb = command.verb();
        let valid = self.valid_now_text();
        let text = match self.state {
            State::Authorization { .. } => {
                format!("{} is only valid after login. {valid}", verb.keyword())
            }
            _ => format!("{} is not valid after login. {valid}", verb.keyword()),
        };
        self.bad_command(text);
    }

    fn capa(&self) -> Vec<u8> {
        let mut lines: Vec<String> = vec!["TOP".into()];
        let authorization = matches!(self.state, State::Authorization { .. });
        if authorization && self.settings.plaintext_auth {
            lines.push("USER".into());
        }
        if authorization && self.stls_offered() {
            lines.push("STLS".into());
        }
        let mechanisms = self.usable_mechanisms();
        if !mechanisms.is_empty() {
            let names: Vec<&str> = mechanisms.iter().map(|m| m.name()).collect();
            lines.push(format!("SASL {}", names.join(" ")));
        }
        lines.push("UTF8 USER".into());
        lines.extend([
            "UIDL".into(),
            "RESP-CODES".into(),
            "AUTH-RESP-CODE".into(),
            "PIPELINING".into(),
        ]);
        if let Some(expire) = &self.settings.expire {
            lines.push(format!("EXPIRE {expire}"));
        }
        if let Some(delay) = self.settings.login_delay_secs {
            lines.push(format!("LOGIN-DELAY {delay}"));
        }
        lines.push(format!(
            "IMPLEMENTATION mailbag-{}",
            env!("CARGO_PKG_VERSION")
        ));
        lines.push("X-HELP".into());
        lines.push("X-SUMMARY".into());
        response::multiline("Capability list follows", lines)
    }

    fn help(&self) -> Vec<u8> {
        let lines: Vec<String> = self.valid_now().iter().map(|v| v.usage()).collect();
        response::multiline("Commands valid now:", lines)
    }

    fn stls_offered(&self) -> bool {
        self.settings.tls_available && !self.settings.tls_active && !self.utf8
    }

    /// The mechanisms a client may use on this connection now: those that
    /// send the password need TLS or a trusted network, CRAM-MD5 a user
    /// who can use it.
    fn usable_mechanisms(&self) -> Vec<Mechanism> {
        self.settings
            .sasl_mechanisms
            .iter()
            .copied()
            .filter(|m| !m.is_plaintext() || self.settings.plaintext_auth)
            .filter(|m| *m != Mechanism::CramMd5 || self.settings.cram_md5_challenge.is_some())
            .filter(|m| !m.is_bearer() || (self.settings.bearer_tokens && self.settings.tls_active))
            .collect()
    }

    fn start_tls(&mut self) {
        if !self.settings.tls_available {
            return self.send(response::err(None, "TLS is not available on this server"));
        }
        if self.settings.tls_active {
            return self.send(response::err(None, "This connection already uses TLS"));
        }
        if self.utf8 {
            // RFC 6856 §2.1: STLS after UTF8 is a protocol error.
            return self.send(response::err(None, "STLS is not allowed after UTF8"));
        }
        self.send(response::ok("Begin TLS negotiation"));
        // Anything pipelined behind STLS was sent in the clear and must not
        // run as if it came over TLS (the STARTTLS command injection).
        self.reader.discard_buffered();
        self.act(Pending::StartTls, Action::StartTls);
    }

    fn auth(&mut self, mechanism: Option<String>, initial: Option<Secret<String>>) {
        let usable = self.usable_mechanisms();
        let Some(name) = mechanism else {
            // RFC 1734: bare AUTH lists the mechanisms, for clients older
            // than CAPA.
            let names: Vec<&str> = usable.iter().map(|m| m.name()).collect();
            return self.send(response::multiline("SASL mechanisms follow", names));
        };
        let names: Vec<&str> = usable.iter().map(|m| m.name()).collect();
        let Some(mechanism) =
            Mechanism::from_name(&name).filter(|m| self.settings.sasl_mechanisms.contains(m))
        else {
            return self.send(response::err(
                None,
                format!("Unsupported SASL mechanism. Available: {}", names.join(" ")),
            ));
        };
        if !usable.contains(&mechanism) {
            let text = if mechanism.is_plaintext() {
                "Plaintext authentication is not allowed on an unencrypted connection; use STLS first"
            } else if mechanism.is_bearer()
                && self.settings.bearer_tokens
                && !self.settings.tls_active
            {
                "Bearer tokens are accepted only over TLS; use STLS first"
            } else {
                "This mechanism cannot be used here"
            };
            return self.send(response::err(Some(Code::Auth), text));
        }
        let has_initial = initial.is_some();
        let initial = match initial {
            None => Vec::new(),
            Some(text) => match decode_response(text.expose()) {
                Some(bytes) => bytes,
                None => {
                    return self.send(response::err(
                        Some(Code::Auth),
                        "AUTH initial response is not valid base64",
                    ))
                }
            },
        };
        let exchange = match mechanism {
            Mechanism::Plain if has_initial => {
                Exchange::Plain(sasl::plain::Plain::with_initial_response())
            }
            Mechanism::Plain => Exchange::Plain(Default::default()),
            Mechanism::Login => Exchange::Login(Default::default()),
            Mechanism::CramMd5 => match self.settings.cram_md5_challenge.clone() {
                Some(challenge) => Exchange::CramMd5(sasl::cram_md5::CramMd5::new(challenge)),
                // Not usable without a challenge: refused above.
                None => {
                    return self.send(response::err(
                        Some(Code::Auth),
                        "This mechanism cannot be used here",
                    ))
                }
            },
            Mechanism::ScramSha256 => Exchange::ScramSha256(Box::default()),
            Mechanism::OAuthBearer => Exchange::OAuth(sasl::oauth::OAuth::new(
                sasl::oauth::Format::OAuthBearer,
                has_initial,
            )),
            Mechanism::XOAuth2 => Exchange::OAuth(sasl::oauth::OAuth::new(
                sasl::oauth::Format::XOAuth2,
                has_initial,
            )),
        };
        self.state = State::Sasl(Sasl::Running(exchange));
        self.sasl_login = true;
        // RFC 5034 §4: responses after the command may be of any length.
        self.reader
            .set_max_line_octets(self.settings.max_sasl_line_octets);
        self.feed_exchange(&initial);
    }

    fn feed_exchange(&mut self, response: &[u8]) {
        let (State::Sasl(Sasl::Running(exchange)) | State::Sasl(Sasl::Proving { exchange, .. })) =
            &mut self.state
        else {
            return;
        };
        let step = exchange.step(response);
        self.sasl_step(step);
    }

    fn sasl_response(&mut self, line: &[u8]) {
        if line == b"*" {
            self.transcript(b"*".to_vec());
            if matches!(&self.state, State::Sasl(Sasl::Running(Exchange::OAuth(m))) if m.awaiting_dummy())
            {
                // The token was refused already: cancelling now is that
                // failure, not a way around counting it.
                return self.auth_failed_with("the token was refused");
            }
            self.end_sasl();
            return self.send(response::err(None, "AUTH cancelled"));
        }
        self.transcript(b"***".to_vec());
        match std::str::from_utf8(line).ok().and_then(decode_response) {
            Some(bytes) => self.feed_exchange(&bytes),
            None => {
                self.end_sasl();
                self.send(response::err(
                    Some(Code::Auth),
                    "AUTH response is not valid base64; AUTH cancelled",
                ));
            }
        }
    }

    fn sasl_step(&mut self, step: Step) {
        match step {
            Step::Challenge(bytes) => {
                let mut line = b"+ ".to_vec();
                line.extend_from_slice(BASE64_STANDARD.encode(bytes).as_bytes());
                line.extend_from_slice(b"\r\n");
                self.send(line);
            }
            Step::Password {
                user,
                authzid,
                password,
            } => {
                let Some(acting_for) = self.may_act_for(&user, authzid) else {
                    return self.auth_failed_with("logging in as another user is not allowed");
                };
                self.end_sasl();
                self.act(
                    Pending::Authenticate { acting_for },
                    Action::Authenticate {
                        user,
                        credential: Credential::Password(password),
                    },
                );
            }
            Step::CramMd5 {
                user,
                challenge,
                digest,
            } => {
                self.end_sasl();
                self.act(
                    Pending::Authenticate { acting_for: None },
                    Action::Authenticate {
                        user,
                        credential: Credential::CramMd5 { challenge, digest },
                    },
                );
            }
            Step::Token { user, token } => {
                self.act(Pending::Token, Action::CheckToken { user, token });
            }
            Step::Failed(sasl::Failure::Rejected)
                if matches!(self.state, State::Sasl(Sasl::Running(Exchange::OAuth(_)))) =>
            {
                self.auth_failed_with("the token was refused")
            }
            Step::ScramLookup { user, authzid } => {
                let Some(acting_for) = self.may_act_for(&user, authzid) else {
                    return self.auth_failed_with("logging in as another user is not allowed");
                };
                self.act(
                    Pending::ScramLookup { acting_for },
                    Action::ScramLookup { user },
                )
            }
            // Only SCRAM proves or refuses a login by itself, and only
            // once it has the user's keys.
            Step::Authenticated | Step::Failed(sasl::Failure::Rejected) => {
                let proved = matches!(step, Step::Authenticated);
                let State::Sasl(Sasl::Proving { login, .. }) =
                    std::mem::replace(&mut self.state, State::Authorization { user: None })
                else {
                    return self.auth_failed_with("malformed SASL response");
                };
                self.end_sasl();
                if proved {
                    self.open(login.maildrop());
                } else {
                    self.act(
                        Pending::Authenticate { acting_for: None },
                        Action::Rejected { user: login.user },
                    );
                }
            }
            Step::Failed(sasl::Failure::Malformed) => {
                self.auth_failed_with("malformed SASL response")
            }
            Step::Failed(sasl::Failure::AuthzidRefused) => {
                self.auth_failed_with("logging in as another user is not allowed")
            }
        }
    }

    /// The maildrop `user` asks to open as `authzid`: `Some(None)` for
    /// their own, `Some(Some(target))` for a master user naming another,
    /// `None` when `user` may not.
    fn may_act_for(&self, user: &str, authzid: Option<String>) -> Option<Option<String>> {
        match authzid {
            None => Some(None),
            Some(target) if self.settings.master_users.iter().any(|m| m == user) => {
                Some(Some(target))
            }
            Some(_) => None,
        }
    }

    /// Leaves an AUTH exchange: back to command lines and their limit.
    fn end_sasl(&mut self) {
        self.reader
            .set_max_line_octets(self.settings.max_line_octets);
        if matches!(self.state, State::Sasl(_)) {
            self.state = State::Authorization { user: None };
        }
    }

    fn authorization(&mut self, command: Command) {
        if let Command::Auth { mechanism, initial } = command {
            return self.auth(mechanism, initial);
        }
        if matches!(command, Command::Stls) {
            return self.start_tls();
        }
        let State::Authorization { user } = &mut self.state else {
            return;
        };
        match command {
            Command::Utf8 => {
                self.utf8 = true;
                self.send(response::ok("UTF-8 enabled"));
            }
            Command::Capa => self.send(self.capa()),
            Command::Help => self.send(self.help()),
            Command::Quit => self.close_with(response::ok("mailbag signing off")),
            Command::User(_) | Command::Pass(_) | Command::Apop { .. }
                if !self.settings.plaintext_auth =>
            {
                self.send(response::err(
                    Some(Code::Auth),
                    "Plaintext authentication is not allowed on an unencrypted connection; use STLS first",
                ));
            }
            Command::User(name) => {
                let Some(name) = sasl::saslprep(&name) else {
                    return self.send(response::err(
                        Some(Code::Auth),
                        "User name contains characters that are not allowed",
                    ));
                };
                *user = Some(name);
                // RFC 1939 §7 allows refusing unknown names here; answering
                // alike for all names keeps user existence secret.
                self.send(response::ok("Send PASS"));
            }
            Command::Pass(password) => match user.clone() {
                None => self.send(response::err(None, "Send USER first")),
                Some(name) => {
                    // RFC 6856 §2.2: SASLprep the password as a query string;
                    // one that fails it cannot match anything stored.
                    let password = sasl::saslprep(password.expose())
                        .map(Secret::new)
                        .unwrap_or(password);
                    self.sasl_login = false;
                    self.act(
                        Pending::Authenticate { acting_for: None },
                        Action::Authenticate {
                            user: name,
                            credential: Credential::Password(password),
                        },
                    )
                }
            },
            Command::Apop { name, digest } => match self.settings.apop_timestamp.clone() {
                None => self.send(response::err(
                    None,
                    "APOP is not available on this server; use USER and PASS",
                )),
                Some(timestamp) => self.act(
                    Pending::Authenticate { acting_for: None },
                    Action::Authenticate {
                        user: name,
                        credential: Credential::Apop { timestamp, digest },
                    },
                ),
            },
            other => self.misplaced(&other),
        }
    }

    fn transaction(&mut self, command: Command) {
        let State::Transaction(t) = &mut self.state else {
            return;
        };
        match command {
            Command::Stat => {
                let (count, octets) = t.visible();
                self.send(response::ok(format!("{count} {octets}")));
            }
            Command::List(None) => {
                let (count, octets) = t.visible();
                let head = format!("{count} message{} ({octets} octets)", plural(count));
                let reply = listing(&head, t, 12, |out, m| {
                    let _ = write!(out, "{}", m.size);
                });
                self.send(reply);
            }
            Command::List(Some(n)) => {
                let reply = t
                    .index(n)
                    .map(|i| response::ok(format!("{n} {}", t.message(i).size)));
                self.send(reply.unwrap_or_else(|e| e));
            }
            Command::Uidl(None) => {
                let reply = listing("Unique-ID listing follows", t, 32, |out, m| {
                    out.extend_from_slice(m.uid.as_bytes());
                });
                self.send(reply);
            }
            Command::Uidl(Some(n)) => {
                let reply = t
                    .index(n)
                    .map(|i| response::ok(format!("{n} {}", t.message(i).uid)));
                self.send(reply.unwrap_or_else(|e| e));
            }
            Command::Retr(n) => match t.index(n) {
                Ok(index) => {
                    let size = t.message(index).size;
                    self.act(
                        Pending::Retrieve { index, whole: true },
                        Action::Retrieve {
                            index,
                            top_lines: None,
                            status: response::ok(format!("{size} octets")),
                        },
                    );
                }
                Err(e) => self.send(e),
            },
            Command::Top { msg, lines } => match t.index(msg) {
                Ok(index) => self.act(
                    Pending::Retrieve {
                        index,
                        whole: false,
                    },
                    Action::Retrieve {
                        index,
                        top_lines: Some(lines),
                        status: response::ok("Top of message follows"),
                    },
                ),
                Err(e) => self.send(e),
            },
            Command::Dele(n) => match t.index(n) {
                Ok(i) => {
                    let size = t.message(i).size;
                    t.deleted.insert(i, size);
                    self.send(response::ok(format!(
                        "Message {n} marked for deletion at QUIT"
                    )));
                }
                Err(e) => self.send(e),
            },
            Command::Rset => {
                t.deleted.clear();
                let (count, octets) = t.visible();
                self.send(response::ok(format!(
                    "Maildrop has {count} message{} ({octets} octets)",
                    plural(count)
                )));
            }
            Command::Noop => self.send(response::ok("")),
            Command::Capa => self.send(self.capa()),
            Command::Help => self.send(self.help()),
            Command::Summary(None) => {
                let indexes: Vec<Index> = t.undeleted().collect();
                let count = indexes.len();
                self.act(Pending::Summarize { count }, Action::Summarize { indexes });
            }
            Command::Summary(Some(n)) => match t.index(n) {
                Ok(index) => self.act(
                    Pending::Summarize { count: 1 },
                    Action::Summarize {
                        indexes: vec![index],
                    },
                ),
                Err(e) => self.send(e),
            },
            Command::Quit => {
                let State::Transaction(t) = std::mem::replace(&mut self.state, State::Update)
                else {
                    return;
                };
                let deleted: Vec<Index> = Index::all(t.messages.len())
                    .filter(|&i| t.deleted.contains(i))
                    .collect();
                let retrieved: Vec<Index> =
                    t.undeleted().filter(|&i| t.retrieved.contains(i)).collect();
                let (count, octets) = t.visible();
                self.tally.remaining = count as u64;
                self.tally.remaining_octets = octets;
                self.act(
                    Pending::Commit {
                        deleted: t.deleted.len() as u64,
                        deleted_octets: t.deleted.octets(),
                    },
                    Action::Commit { deleted, retrieved },
                );
            }
            other => self.misplaced(&other),
        }
    }
}

/// The one place where a store failure becomes wire text (Dovecot's
/// `client_send_storage_error`): `[IN-USE]` for a maildrop another session
/// holds, no code for a message another program removed (the client can
/// go on with the others), `[SYS/PERM]` for a maildrop that will not open
/// by retrying, `[SYS/TEMP]` for everything else.
fn store_failed(request: StoreRequest, failure: StoreFailure) -> Vec<u8> {
    match (request, failure) {
        (StoreRequest::Open, StoreFailure::Locked) => response::err(
            Some(Code::InUse),
            "Maildrop is locked by another session; try again when it ends",
        ),
        (StoreRequest::Open, StoreFailure::Permanent) => {
            response::err(Some(Code::SysPerm), "Maildrop cannot be opened")
        }
        (StoreRequest::Open, _) => response::err(
            Some(Code::SysTemp),
            "Maildrop cannot be opened right now; try again later",
        ),
        (StoreRequest::Read(i), StoreFailure::Vanished) => response::err(
            None,
            format!("Message {} was removed by another program", i.number()),
        ),
        (StoreRequest::Read(i), _) => response::err(
            Some(Code::SysTemp),
            format!("Message {} cannot be read right now", i.number()),
        ),
        (StoreRequest::Summarize, _) => {
            response::err(Some(Code::SysTemp), "The summary cannot be made right now")
        }
        (StoreRequest::Commit, _) => response::err(
            Some(Code::SysTemp),
            "Some deleted messages were not removed; they are still in the maildrop",
        ),
    }
}

/// A LIST or UIDL listing: `+OK head`, then `n <item>` for every message
/// not deleted, then `.`. Written straight into one buffer (a maildrop may
/// hold 100,000 messages). No line needs dot-stuffing: each starts with a
/// digit, and sizes and UIDLs hold no CR or LF.
fn listing(
    head: &str,
    t: &Transaction,
    octets_per_line: usize,
    item: impl Fn(&mut Vec<u8>, &MessageInfo),
) -> Vec<u8> {
    let mut out = response::ok(head);
    out.reserve(t.messages.len() * octets_per_line + 3);
    for i in t.undeleted() {
        let _ = write!(out, "{} ", i.number());
        item(&mut out, t.message(i));
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b".\r\n");
    out
}

/// RFC 5034 §4: strict base64 (no stray characters, padding only at the
/// end); `=` alone is an empty response.
fn decode_response(text: &str) -> Option<Vec<u8>> {
    if text == "=" {
        return Some(Vec::new());
    }
    BASE64_STANDARD.decode(text).ok()
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A scripted driver: one user `mrose` / `secret`, a user `busy` whose
    /// maildrop is locked, two messages, message bodies as fixed text.
    #[derive(Default)]
    struct Driver {
        out: Vec<u8>,
        commits: Vec<(Vec<usize>, Vec<usize>)>,
        closed: bool,
        vanished: Option<usize>,
        tls_started: usize,
    }

    /// The positions a store gets for the indexes of an action.
    fn positions(indexes: &[Index]) -> Vec<usize> {
        indexes.iter().map(|i| i.get()).collect()
    }

    fn messages() -> Vec<MessageInfo> {
        vec![
            MessageInfo {
                uid: "whqtswO00WBw418f9t5JxYwZ".into(),
                size: 120,
            },
            MessageInfo {
                uid: "QhdPYR:00WBw1Ph7x7".into(),
                size: 200,
            },
        ]
    }

    impl Driver {
        fn perform(&mut self, action: Action) -> Outcome {
            match action {
                Action::Authenticate { user, credential } => {
                    let good = match credential {
                        Credential::Password(p) => p.expose() == "secret",
                        Credential::Apop { digest, .. } => digest.expose() == "good",
                        Credential::CramMd5 { challenge, digest } => {
                            challenge == "<1.2@h>" && digest.expose() == "good"
                        }
                    };
                    match (user.as_str(), good) {
                        ("mrose" | "busy" | "huge", true) => Outcome::Authenticated { user },
                        ("down", _) => Outcome::AuthUnavailable,
                        _ => Outcome::AuthRejected,
                    }
                }
                Action::OpenMaildrop { user } => match user.as_str() {
                    "busy" => Outcome::OpenFailed(StoreFailure::Locked),
                    "huge" => Outcome::Opened(
                        [u64::MAX, 5, u64::MAX - 1]
                            .into_iter()
                            .enumerate()
                            .map(|(i, size)| MessageInfo {
                                uid: format!("u{i}"),
                                size,
                            })
                            .collect(),
                    ),
                    _ => Outcome::Opened(messages()),
                },
                Action::Retrieve { index, status, .. } => {
                    if self.vanished == Some(index.get()) {
                        return Outcome::NotSent(StoreFailure::Vanished);
                    }
                    self.out.extend_from_slice(&status);
                    self.out.extend_from_slice(b"body\r\n.\r\n");
                    Outcome::Sent
                }
                Action::Commit { deleted, retrieved } => {
                    self.commits
                        .push((positions(&deleted), positions(&retrieved)));
                    Outcome::Committed
                }
                Action::Rejected { .. } => Outcome::AuthRejected,
                // The token "good" names mrose; "down" finds the
                // verifier unavailable.
                Action::CheckToken { user, token } => match token.expose().as_str() {
                    "good" if user.as_deref().is_none_or(|u| u == "mrose") => {
                        Outcome::Authenticated {
                            user: "mrose".into(),
                        }
                    }
                    "down" => Outcome::AuthUnavailable,
                    _ => Outcome::AuthRejected,
                },
                Action::StartTls => {
                    self.tls_started += 1;
                    Outcome::TlsStarted
                }
                Action::ScramLookup { user } => Outcome::ScramKeys {
                    user,
                    keys: sasl::scram::ScramKeys::derive(b"secret", b"salt", 4096),
                    nonce: "SERVERNONCE".into(),
                },
                Action::Summarize { indexes } => {
                    if indexes.iter().any(|i| self.vanished == Some(i.get())) {
                        return Outcome::NotSent(StoreFailure::Temporary);
                    }
                    Outcome::Summarized(
                        indexes
                            .iter()
                            .map(|i| format!("{} summary", i.number()))
                            .collect(),
                    )
                }
            }
        }

        fn run(&mut self, conn: &mut Conn, input: &[u8]) -> String {
            let start = self.out.len();
            conn.receive(input);
            loop {
                match conn.next() {
                    Event::Send(b) => self.out.extend_from_slice(&b),
                    Event::Act(a) => {
                        let outcome = self.perform(a);
                        conn.complete(outcome);
                    }
                    Event::Received(_) | Event::Command(_) => {}
                    Event::NeedInput => break,
                    Event::Close => {
                        self.closed = true;
                        break;
                    }
                }
            }
            String::from_utf8_lossy(&self.out[start..]).into_owned()
        }
    }

    fn session(settings: Settings) -> (Conn, Driver, String) {
        let mut conn = Conn::new(settings);
        let mut d = Driver::default();
        let greeting = d.run(&mut conn, b"");
        (conn, d, greeting)
    }

    fn logged_in() -> (Conn, Driver) {
        let (mut conn, mut d, _) = session(Settings::default());
        let out = d.run(&mut conn, b"USER mrose\r\nPASS secret\r\n");
        assert!(
            out.ends_with("+OK Logged in. Maildrop has 2 messages (320 octets)\r\n"),
            "{out}"
        );
        (conn, d)
    }

    #[test]
    fn sizes_that_overflow_saturate_instead_of_wrapping() {
        let (mut conn, mut d, _) = session(Settings::default());
        let out = d.run(&mut conn, b"USER huge\r\nPASS secret\r\n");
        assert!(out.ends_with("(18446744073709551615 octets)\r\n"), "{out}");
        assert_eq!(
            d.run(&mut conn, b"STAT\r\n"),
            "+OK 3 18446744073709551615\r\n"
        );
        d.run(&mut conn, b"DELE 1\r\n");
        assert_eq!(
            d.run(&mut conn, b"STAT\r\n"),
            "+OK 2 18446744073709551615\r\n"
        );
        d.run(&mut conn, b"DELE 3\r\n");
        assert_eq!(d.run(&mut conn, b"STAT\r\n"), "+OK 1 5\r\n");
        d.run(&mut conn, b"RSET\r\n");
        assert_eq!(
            d.run(&mut conn, b"STAT\r\n"),
            "+OK 3 18446744073709551615\r\n"
        );
    }

    #[test]
    fn greeting_carries_the_apop_timestamp_only_when_possible() {
        let (_, _, g) = session(Settings::default());
        assert_eq!(g, "+OK mailbag POP3 server ready\r\n");
        let (_, _, g) = session(Settings {
            apop_timestamp: Some("<1896.697170952@dbc.mtview.ca.us>".into()),
            ..Settings::default()
        });
        assert_eq!(
            g,
            "+OK mailbag POP3 server ready <1896.697170952@dbc.mtview.ca.us>\r\n"
        );
    }

    #[test]
    fn rfc1939_session_with_deletion_at_quit() {
        let (mut conn, mut d) = logged_in();
        assert_eq!(d.run(&mut conn, b"STAT\r\n"), "+OK 2 320\r\n");
        assert_eq!(
            d.run(&mut conn, b"LIST\r\n"),
            "+OK 2 messages (320 octets)\r\n1 120\r\n2 200\r\n.\r\n"
        );
        assert_eq!(d.run(&mut conn, b"LIST 2\r\n"), "+OK 2 200\r\n");
        assert_eq!(
            d.run(&mut conn, b"RETR 1\r\n"),
            "+OK 120 octets\r\nbody\r\n.\r\n"
        );
        assert_eq!(
            d.run(&mut conn, b"DELE 1\r\n"),
            "+OK Message 1 marked for deletion at QUIT\r\n"
        );
        assert_eq!(d.run(&mut conn, b"STAT\r\n"), "+OK 1 200\r\n");
        assert_eq!(
            d.run(&mut conn, b"LIST\r\n"),
            "+OK 1 message (200 octets)\r\n2 200\r\n.\r\n"
        );
        assert_eq!(
            d.run(&mut conn, b"RETR 1\r\n"),
            "-ERR Message 1 is already deleted\r\n"
        );
        assert_eq!(
            d.run(&mut conn, b"DELE 1\r\n"),
            "-ERR Message 1 is already deleted\r\n"
        );
        assert_eq!(
            d.run(&mut conn, b"UIDL\r\n"),
            "+OK Unique-ID listing follows\r\n2 QhdPYR:00WBw1Ph7x7\r\n.\r\n"
        );
        assert_eq!(
            d.run(&mut conn, b"QUIT\r\n"),
            "+OK mailbag signing off (1 message left)\r\n"
        );
        assert!(d.closed);
        assert_eq!(d.commits, vec![(vec![0], vec![])]);
        let tally = conn.tally();
        assert_eq!((tally.deleted, tally.remaining), (1, 1));
    }

    #[test]
    fn retrieved_messages_are_reported_at_commit_but_top_is_not() {
        let (mut conn, mut d) = logged_in();
        d.run(&mut conn, b"RETR 2\r\nTOP 1 0\r\nQUIT\r\n");
        assert_eq!(d.commits, vec![(vec![], vec![1])]);
        assert_eq!(conn.tally().retrieved, 1);
    }

    #[test]
    fn rset_unmarks_and_a_dropped_session_commits_nothing() {
        let (mut conn, mut d) = logged_in();
        d.run(&mut conn, b"DELE 1\r\nDELE 2\r\n");
        assert_eq!(
            d.run(&mut conn, b"RSET\r\n"),
            "+OK Maildrop has 2 messages (320 octets)\r\n"
        );
        assert_eq!(d.run(&mut conn, b"STAT\r\n"), "+OK 2 320\r\n");
        d.run(&mut conn, b"DELE 2\r\n");
        drop(conn);
        assert!(d.commits.is_empty());
    }

    #[test]
    fn message_numbers_are_checked_in_one_place() {
        let (mut conn, mut d) = logged_in();
        assert_eq!(
            d.run(&mut conn, b"RETR 3\r\n"),
            "-ERR No such message: 3 (there are 2 messages, 1 to 2)\r\n"
        );
        for arg in ["0", "-1", "1a", "4294967297", "99999999999999999999"] {
            let out = d.run(&mut conn, format!("RETR {arg}\r\n").as_bytes());
            assert!(
                out.starts_with("-ERR Invalid message number"),
                "{arg}: {out}"
            );
        }
        assert!(d
            .run(&mut conn, b"TOP 1 -5\r\n")
            .starts_with("-ERR Usage: TOP msg lines"));
        assert_eq!(
            d.run(&mut conn, b"TOP 1 99999999999999999999999\r\n"),
            "+OK Top of message follows\r\nbody\r\n.\r\n"
        );
        assert_eq!(
            d.run(&mut conn, b"LIST 9\r\n"),
            "-ERR No such message: 9 (there are 2 messages, 1 to 2)\r\n"
        );
    }

    #[test]
    fn vanished_message_is_an_error_not_a_crash() {
        let (mut conn, mut d) = logged_in();
        d.vanished = Some(0);
        assert_eq!(
            d.run(&mut conn, b"RETR 1\r\n"),
            "-ERR Message 1 was removed by another program\r\n"
        );
        assert_eq!(d.run(&mut conn, b"NOOP\r\n"), "+OK \r\n");
    }

    #[test]
    fn the_name_the_passdb_gives_is_the_one_opened_and_logged_in() {
        let mut conn = Conn::new(Settings::default());
        let mut events = Vec::new();
        conn.receive(b"USER MRose\r\nPASS secret\r\n");
        loop {
            match conn.next() {
                Event::Act(Action::Authenticate { user, .. }) => {
                    assert_eq!(user, "MRose");
                    conn.complete(Outcome::Authenticated {
                        user: "mrose".into(),
                    });
                }
                Event::Act(Action::OpenMaildrop { user }) => {
                    events.push(user);
                    conn.complete(Outcome::Opened(messages()));
                }
                Event::NeedInput => break,
                _ => {}
            }
        }
        assert_eq!(events, ["mrose"]);
        assert_eq!(conn.user(), Some("mrose"));
    }

    #[test]
    fn wrong_password_can_be_retried_up_to_the_limit() {
        let (mut conn, mut d, _) = session(Settings::default());
        let out = d.run(&mut conn, b"USER mrose\r\nPASS wrong\r\n");
        assert!(out.contains("-ERR [AUTH] Authentication failed"), "{out}");
        assert!(!d.closed);
        let out = d.run(&mut conn, b"PASS secret\r\n");
        assert_eq!(out, "-ERR Send USER first\r\n");
        let out = d.run(&mut conn, b"USER mrose\r\nPASS secret\r\n");
        assert!(out.ends_with("+OK Logged in. Maildrop has 2 messages (320 octets)\r\n"));
    }

    #[test]
    fn too_many_failures_close_the_connection() {
        let (mut conn, mut d, _) = session(Settings::default());
        d.run(&mut conn, b"USER a\r\nPASS b\r\nUSER a\r\nPASS b\r\n");
        assert!(!d.closed);
        let out = d.run(&mut conn, b"USER a\r\nPASS b\r\nUSER mrose\r\n");
        assert!(
            out.ends_with("-ERR [AUTH] Authentication failed 3 times; closing the connection\r\n"),
            "{out}"
        );
        assert!(d.closed);
    }

    #[test]
    fn locked_maildrop_answers_in_use_and_stays_in_authorization() {
        let (mut conn, mut d, _) = session(Settings::default());
        let out = d.run(&mut conn, b"USER busy\r\nPASS secret\r\n");
        assert!(
            out.ends_with(
                "-ERR [IN-USE] Maildrop is locked by another session; try again when it ends\r\n"
            ),
            "{out}"
        );
        assert!(!conn.in_transaction());
        assert!(d
            .run(&mut conn, b"USER mrose\r\nPASS secret\r\n")
            .contains("+OK Logged in"));
    }

    #[test]
    fn unavailable_passdb_is_a_temporary_error() {
        let (mut conn, mut d, _) = session(Settings::default());
        let out = d.run(&mut conn, b"USER down\r\nPASS x\r\n");
        assert!(out.ends_with(
            "-ERR [SYS/TEMP] Authentication is unavailable right now; try again later\r\n"
        ));
    }

    #[test]
    fn apop_only_with_a_timestamp() {
        let (mut conn, mut d, _) = session(Settings::default());
        assert_eq!(
            d.run(&mut conn, b"APOP mrose good\r\n"),
            "-ERR APOP is not available on this server; use USER and PASS\r\n"
        );
        let (mut conn, mut d, _) = session(Settings {
            apop_timestamp: Some("<1.2@h>".into()),
            ..Settings::default()
        });
        assert!(d
            .run(&mut conn, b"APOP mrose good\r\n")
            .contains("+OK Logged in"));
    }

    #[test]
    fn unknown_and_misplaced_commands_say_what_is_valid() {
        let (mut conn, mut d, _) = session(Settings::default());
        assert_eq!(
            d.run(&mut conn, b"STAT\r\n"),
            "-ERR STAT is only valid after login. Valid now: USER PASS AUTH UTF8 CAPA QUIT HELP\r\n"
        );
        let (mut conn, mut d) = logged_in();
        assert_eq!(
            d.run(&mut conn, b"STS\r\n"),
            "-ERR Unknown command \"STS\". Valid now: STAT LIST RETR TOP DELE RSET UIDL NOOP CAPA QUIT HELP SUMMARY\r\n"
        );
        assert_eq!(
            d.run(&mut conn, b"USER x\r\n"),
            "-ERR USER is not valid after login. Valid now: STAT LIST RETR TOP DELE RSET UIDL NOOP CAPA QUIT HELP SUMMARY\r\n"
        );
        let help = d.run(&mut conn, b"HELP\r\n");
        assert!(
            help.starts_with("+OK Commands valid now:\r\nSTAT "),
            "{help}"
        );
        assert!(help.ends_with("\r\n.\r\n"));
    }

    #[test]
    fn capa_lists_rfc2449_capabilities_per_state() {
        let (mut conn, mut d, _) = session(Settings {
            expire: Some("NEVER".into()),
            login_delay_secs: Some(900),
            ..Settings::default()
        });
        let capa = d.run(&mut conn, b"CAPA\r\n");
        let lines: Vec<&str> = capa.split("\r\n").collect();
        for want in [
            "TOP",
            "USER",
            "UIDL",
            "RESP-CODES",
            "AUTH-RESP-CODE",
            "PIPELINING",
            "EXPIRE NEVER",
            "LOGIN-DELAY 900",
            "X-HELP",
            "X-SUMMARY",
        ] {
            assert!(lines.contains(&want), "{want} missing in {capa}");
        }
        assert!(lines
            .iter()
            .any(|l| l.starts_with("IMPLEMENTATION mailbag")));
        d.run(&mut conn, b"USER mrose\r\nPASS secret\r\n");
        let capa = d.run(&mut conn, b"CAPA\r\n");
        assert!(!capa.split("\r\n").any(|l| l == "USER"), "{capa}");
    }

    #[test]
    fn plaintext_refused_when_not_allowed() {
        let (mut conn, mut d, _) = session(Settings {
            plaintext_auth: false,
            ..Settings::default()
        });
        let out = d.run(&mut conn, b"USER mrose\r\n");
        assert!(out.starts_with("-ERR [AUTH] Plaintext authentication is not allowed"));
        assert!(!d.run(&mut conn, b"CAPA\r\n").contains("\r\nUSER\r\n"));
    }

    #[test]
    fn pipelined_commands_are_answered_in_order() {
        let (mut conn, mut d) = logged_in();
        let input = "NOOP\r\n".repeat(50) + &"STAT\r\n".repeat(50);
        let out = d.run(&mut conn, input.as_bytes());
        let want = "+OK \r\n".repeat(50) + &"+OK 2 320\r\n".repeat(50);
        assert_eq!(out, want);
    }

    #[test]
    fn bad_commands_are_limited() {
        let (mut conn, mut d, _) = session(Settings {
            max_bad_commands: 3,
            ..Settings::default()
        });
        d.run(&mut conn, b"X\r\n\r\n");
        assert!(!d.closed);
        let out = d.run(&mut conn, b"\x00\r\n");
        assert!(out.contains("Too many bad commands"), "{out}");
        assert!(d.closed);
    }

    #[test]
    fn quit_before_login_closes_without_commit() {
        let (mut conn, mut d, _) = session(Settings::default());
        assert_eq!(d.run(&mut conn, b"QUIT\r\n"), "+OK mailbag signing off\r\n");
        assert!(d.closed && d.commits.is_empty());
    }

    #[test]
    fn nothing_after_quit_is_executed() {
        let (mut conn, mut d) = logged_in();
        let out = d.run(&mut conn, b"QUIT\r\nDELE 1\r\n");
        assert_eq!(out, "+OK mailbag signing off (2 messages left)\r\n");
        assert_eq!(d.commits, vec![(vec![], vec![])]);
    }

    #[test]
    fn transcript_redacts_secrets() {
        let (mut conn, _, _) = session(Settings {
            transcript: true,
            ..Settings::default()
        });
        conn.receive(b"USER mrose\r\nPASS hunter2\r\n");
        let mut seen = Vec::new();
        loop {
            match conn.next() {
                Event::Received(l) => seen.push(String::from_utf8(l).unwrap()),
                Event::Command(_) => {}
                Event::Act(_) => break,
                Event::NeedInput | Event::Close => break,
                Event::Send(_) => {}
            }
        }
        assert_eq!(seen, vec!["USER mrose", "PASS ***"]);
    }

    fn bearer_settings(tls_active: bool) -> Settings {
        Settings {
            tls_available: true,
            tls_active,
            plaintext_auth: tls_active,
            bearer_tokens: true,
            ..Settings::default()
        }
    }

    #[test]
    fn bearer_mechanisms_are_offered_and_accepted_only_over_tls() {
        // Not configured: neither offered nor accepted, even over TLS.
        let (mut conn, mut d, _) = session(Settings {
            tls_active: true,
            ..Settings::default()
        });
        let capa = d.run(&mut conn, b"CAPA\r\n");
        assert!(!capa.contains("OAUTHBEARER"), "{capa}");
        let out = d.run(&mut conn, b"AUTH XOAUTH2\r\n");
        assert!(out.starts_with("-ERR"), "{out}");
        // Configured, in the clear (a trusted network too): refused with
        // [AUTH], not listed.
        for plaintext_auth in [false, true] {
            let (mut conn, mut d, _) = session(Settings {
                plaintext_auth,
                ..bearer_settings(false)
            });
            let capa = d.run(&mut conn, b"CAPA\r\n");
            assert!(!capa.contains("OAUTHBEARER"), "{capa}");
            assert!(!capa.contains("XOAUTH2"), "{capa}");
            let message = b64(b"n,,\x01auth=Bearer good\x01\x01");
            let out = d.run(
                &mut conn,
                format!("AUTH OAUTHBEARER {message}\r\n").as_bytes(),
            );
            assert_eq!(
                out,
                "-ERR [AUTH] Bearer tokens are accepted only over TLS; use STLS first\r\n"
            );
        }
        // Over TLS: listed, and a good token logs in.
        let (mut conn, mut d, _) = session(bearer_settings(true));
        let capa = d.run(&mut conn, b"CAPA\r\n");
        assert!(capa.contains(" OAUTHBEARER XOAUTH2\r\n"), "{capa}");
        let message = b64(b"n,a=mrose,\x01auth=Bearer good\x01\x01");
        let out = d.run(
            &mut conn,
            format!("AUTH OAUTHBEARER {message}\r\n").as_bytes(),
        );
        assert!(out.starts_with("+OK Logged in."), "{out}");
    }

    #[test]
    fn a_refused_token_answers_the_rfc7628_status_then_fails() {
        let (mut conn, mut d, _) = session(bearer_settings(true));
        let message = b64(b"n,,\x01auth=Bearer bad\x01\x01");
        let out = d.run(
            &mut conn,
            format!("AUTH OAUTHBEARER {message}\r\n").as_bytes(),
        );
        assert_eq!(
            out,
            format!("+ {}\r\n", b64(br#"{"status":"invalid_token"}"#))
        );
        let out = d.run(&mut conn, b"AQ==\r\n");
        assert!(
            out.starts_with("-ERR [AUTH] Authentication failed: the token was refused"),
            "{out}"
        );
        // XOAUTH2, prompted, naming a user the token does not name.
        let out = d.run(&mut conn, b"AUTH XOAUTH2\r\n");
        assert_eq!(out, "+ \r\n");
        let out = d.run(
            &mut conn,
            format!("{}\r\n", b64(b"user=other\x01auth=Bearer good\x01\x01")).as_bytes(),
        );
        assert!(out.starts_with("+ "), "{out}");
        // Cancelling instead of the dummy response is the same failure,
        // and the third closes the connection.
        let out = d.run(&mut conn, b"*\r\n");
        assert!(
            out.starts_with("-ERR [AUTH] Authentication failed"),
            "{out}"
        );
        let message = b64(b"n,,\x01auth=Bearer bad\x01\x01");
        d.run(
            &mut conn,
            format!("AUTH OAUTHBEARER {message}\r\n").as_bytes(),
        );
        let out = d.run(&mut conn, b"=\r\n");
        assert!(out.contains("failed 3 times"), "{out}");
        assert!(d.closed);
        // An unavailable verifier is a temporary error, not a failure.
        let (mut conn, mut d, _) = session(bearer_settings(true));
        let message = b64(b"n,,\x01auth=Bearer down\x01\x01");
        let out = d.run(
            &mut conn,
            format!("AUTH OAUTHBEARER {message}\r\n").as_bytes(),
        );
        assert!(out.starts_with("-ERR [SYS/TEMP]"), "{out}");
    }

    fn tls_settings() -> Settings {
        Settings {
            tls_available: true,
            plaintext_auth: false,
            ..Settings::default()
        }
    }

    fn b64(s: &[u8]) -> String {
        BASE64_STANDARD.encode(s)
    }

    #[test]
    fn stls_discards_pipelined_input_and_enables_plaintext() {
        let (mut conn, mut d, _) = session(tls_settings());
        let capa = d.run(&mut conn, b"CAPA\r\n");
        assert!(capa.contains("\r\nSTLS\r\n"), "{capa}");
        assert!(!capa.contains("\r\nUSER\r\n"), "{capa}");
        assert!(capa.contains("\r\nSASL SCRAM-SHA-256\r\n"), "{capa}");
        // RFC 2595 §4: what followed STLS in the same packet never runs.
        let out = d.run(&mut conn, b"STLS\r\nCAPA\r\n");
        assert_eq!(out, "+OK Begin TLS negotiation\r\n");
        assert_eq!(d.tls_started, 1);
        assert!(conn.tls_active());
        let capa = d.run(&mut conn, b"CAPA\r\n");
        assert!(!capa.contains("STLS"), "{capa}");
        assert!(capa.contains("\r\nUSER\r\n"), "{capa}");
        assert!(capa.contains("SASL SCRAM-SHA-256 PLAIN LOGIN"), "{capa}");
        assert_eq!(
            d.run(&mut conn, b"STLS\r\n"),
            "-ERR This connection already uses TLS\r\n"
        );
        assert!(d
            .run(&mut conn, b"USER mrose\r\nPASS secret\r\n")
            .contains("+OK Logged in"));
        assert!(d
            .run(&mut conn, b"STLS\r\n")
            .starts_with("-ERR STLS is not valid after login"));
        assert_eq!(d.tls_started, 1);
    }

    #[test]
    fn user_given_before_stls_is_forgotten_after_the_handshake() {
        let (mut conn, mut d, _) = session(Settings {
            tls_available: true,
            ..Settings::default()
        });
        assert!(d.run(&mut conn, b"USER mrose\r\n").starts_with("+OK"));
        assert_eq!(
            d.run(&mut conn, b"STLS\r\n"),
            "+OK Begin TLS negotiation\r\n"
        );
        assert_eq!(d.tls_started, 1);
        assert_eq!(
            d.run(&mut conn, b"PASS secret\r\n"),
            "-ERR Send USER first\r\n"
        );
        assert!(d
            .run(&mut conn, b"USER mrose\r\nPASS secret\r\n")
            .contains("+OK Logged in"));
    }

    #[test]
    fn stls_whose_handshake_did_not_start_ends_the_session() {
        let (mut conn, _, _) = session(tls_settings());
        conn.receive(b"STLS\r\n");
        assert_eq!(conn.next(), Event::Command(Verb::Stls));
        assert!(matches!(conn.next(), Event::Send(_)));
        assert_eq!(conn.next(), Event::Act(Action::StartTls));
        conn.complete(Outcome::AuthRejected);
        assert_eq!(conn.next(), Event::Close);
        assert!(!conn.tls_active());
    }

    #[test]
    fn stls_without_a_certificate_or_after_utf8_is_refused() {
        let (mut conn, mut d, _) = session(Settings::default());
        assert!(!d.run(&mut conn, b"CAPA\r\n").contains("STLS"));
        assert_eq!(
            d.run(&mut conn, b"STLS\r\n"),
            "-ERR TLS is not available on this server\r\n"
        );
        let (mut conn, mut d, _) = session(tls_settings());
        d.run(&mut conn, b"UTF8\r\n");
        assert_eq!(
            d.run(&mut conn, b"STLS\r\n"),
            "-ERR STLS is not allowed after UTF8\r\n"
        );
        assert_eq!(d.tls_started, 0);
    }

    #[test]
    fn auth_plain_with_initial_response_and_with_continuation() {
        let (mut conn, mut d, _) = session(Settings::default());
        let out = d.run(
            &mut conn,
            format!("AUTH PLAIN {}\r\n", b64(b"\0mrose\0secret")).as_bytes(),
        );
        assert!(out.contains("+OK Logged in"), "{out}");
        let (mut conn, mut d, _) = session(Settings::default());
        assert_eq!(d.run(&mut conn, b"AUTH PLAIN\r\n"), "+ \r\n");
        let out = d.run(
            &mut conn,
            format!("{}\r\n", b64(b"mrose\0mrose\0secret")).as_bytes(),
        );
        assert!(out.contains("+OK Logged in"), "{out}");
    }

    #[test]
    fn auth_plain_refuses_another_authzid_and_wrong_passwords() {
        let (mut conn, mut d, _) = session(Settings::default());
        let out = d.run(
            &mut conn,
            format!("AUTH PLAIN {}\r\n", b64(b"busy\0mrose\0secret")).as_bytes(),
        );
        assert!(
            out.starts_with("-ERR [AUTH] Authentication failed: logging in as another user"),
            "{out}"
        );
        let out = d.run(
            &mut conn,
            format!("AUTH PLAIN {}\r\n", b64(b"\0mrose\0wrong")).as_bytes(),
        );
        assert!(
            out.starts_with("-ERR [AUTH] Authentication failed: wrong"),
            "{out}"
        );
        assert!(out.contains("try AUTH again"), "{out}");
    }

    #[test]
    fn master_users_may_name_another_maildrop() {
        let (mut conn, mut d, _) = session(Settings {
            master_users: vec!["mrose".into()],
            ..Settings::default()
        });
        // The target's maildrop is opened (and "busy" is locked).
        let out = d.run(
            &mut conn,
            format!("AUTH PLAIN {}\r\n", b64(b"busy\0mrose\0secret")).as_bytes(),
        );
        assert!(out.starts_with("-ERR [IN-USE]"), "{out}");
        // A wrong password gets nowhere, authzid or not.
        let out = d.run(
            &mut conn,
            format!("AUTH PLAIN {}\r\n", b64(b"busy\0mrose\0wrong")).as_bytes(),
        );
        assert!(
            out.starts_with("-ERR [AUTH] Authentication failed: wrong"),
            "{out}"
        );
        // Afterwards, a plain login opens the user's own maildrop.
        let out = d.run(&mut conn, b"USER mrose\r\nPASS secret\r\n");
        assert!(out.contains("+OK Logged in"), "{out}");
    }

    #[test]
    fn auth_login_asks_for_user_and_password() {
        let (mut conn, mut d, _) = session(Settings::default());
        assert_eq!(d.run(&mut conn, b"AUTH LOGIN\r\n"), "+ VXNlcm5hbWU6\r\n");
        assert_eq!(d.run(&mut conn, b"bXJvc2U=\r\n"), "+ UGFzc3dvcmQ6\r\n");
        assert!(d.run(&mut conn, b"c2VjcmV0\r\n").contains("+OK Logged in"));
    }

    #[test]
    fn auth_cram_md5_only_with_a_challenge() {
        let (mut conn, mut d, _) = session(Settings::default());
        assert!(!d.run(&mut conn, b"CAPA\r\n").contains("CRAM-MD5"));
        assert!(d
            .run(&mut conn, b"AUTH CRAM-MD5\r\n")
            .starts_with("-ERR [AUTH]"));
        let (mut conn, mut d, _) = session(Settings {
            cram_md5_challenge: Some("<1.2@h>".into()),
            ..Settings::default()
        });
        assert!(d.run(&mut conn, b"CAPA\r\n").contains("CRAM-MD5"));
        assert_eq!(
            d.run(&mut conn, b"AUTH CRAM-MD5\r\n"),
            format!("+ {}\r\n", b64(b"<1.2@h>"))
        );
        let digest = "00112233445566778899aabbccddeeff";
        let out = d.run(
            &mut conn,
            format!("{}\r\n", b64(format!("mrose {digest}").as_bytes())).as_bytes(),
        );
        assert!(
            out.starts_with("-ERR [AUTH] Authentication failed"),
            "{out}"
        );
    }

    #[test]
    fn auth_scram_sha_256_full_exchange() {
        let (mut conn, mut d, _) = session(tls_settings());
        let out = d.run(
            &mut conn,
            format!("AUTH SCRAM-SHA-256 {}\r\n", b64(b"n,,n=mrose,r=CLIENT")).as_bytes(),
        );
        let server_first = BASE64_STANDARD
            .decode(out.trim_end().strip_prefix("+ ").unwrap())
            .unwrap();
        let keys = sasl::scram::ScramKeys::derive(b"secret", b"salt", 4096);
        assert_eq!(
            String::from_utf8(server_first.clone()).unwrap(),
            format!("r=CLIENTSERVERNONCE,s={},i=4096", b64(b"salt"))
        );
        // The client's side of RFC 5802 §3, computed here from the password.
        use hmac::{Hmac, KeyInit, Mac};
        use sha2::{Digest, Sha256};
        let mut salted = [0u8; 32];
        pbkdf2::pbkdf2_hmac::<Sha256>(b"secret", b"salt", 4096, &mut salted);
        let mac = |k: &[u8], m: &[u8]| {
            let mut h = <Hmac<Sha256> as KeyInit>::new_from_slice(k).unwrap();
            h.update(m);
            h.finalize().into_bytes().to_vec()
        };
        let client_key = mac(&salted, b"Client Key");
        assert_eq!(Sha256::digest(&client_key).as_slice(), keys.stored_key);
        let without_proof = "c=biws,r=CLIENTSERVERNONCE";
        let auth = format!(
            "n=mrose,r=CLIENT,{},{without_proof}",
            String::from_utf8(server_first).unwrap()
        );
        let sig = mac(&keys.stored_key, auth.as_bytes());
        let proof: Vec<u8> = client_key.iter().zip(sig).map(|(a, b)| a ^ b).collect();
        let out = d.run(
            &mut conn,
            format!(
                "{}\r\n",
                b64(format!("{without_proof},p={}", b64(&proof)).as_bytes())
            )
            .as_bytes(),
        );
        let v = format!("v={}", b64(&mac(&keys.server_key, auth.as_bytes())));
        assert_eq!(out, format!("+ {}\r\n", b64(v.as_bytes())));
        assert!(d.run(&mut conn, b"\r\n").contains("+OK Logged in"));
    }

    #[test]
    fn wrong_scram_proof_goes_through_the_driver_for_the_failure_delay() {
        let (mut conn, _, _) = session(Settings::default());
        conn.receive(format!("AUTH SCRAM-SHA-256 {}\r\n", b64(b"n,,n=mrose,r=C")).as_bytes());
        assert_eq!(conn.next(), Event::Command(Verb::Auth));
        assert!(matches!(
            conn.next(),
            Event::Act(Action::ScramLookup { .. })
        ));
        conn.complete(Outcome::ScramKeys {
            user: "mrose".into(),
            keys: sasl::scram::ScramKeys::derive(b"secret", b"salt", 4096),
            nonce: "S".into(),
        });
        assert!(matches!(conn.next(), Event::Send(_)));
        let proof = b64(&[0u8; 32]);
        conn.receive(
            format!("{}\r\n", b64(format!("c=biws,r=CS,p={proof}").as_bytes())).as_bytes(),
        );
        assert_eq!(
            conn.next(),
            Event::Act(Action::Rejected {
                user: "mrose".into()
            })
        );
        conn.complete(Outcome::AuthRejected);
        let Event::Send(reply) = conn.next() else {
            panic!("no reply")
        };
        assert!(reply.starts_with(b"-ERR [AUTH] Authentication failed"));
    }

    #[test]
    fn auth_cancel_bad_base64_and_oversized_responses() {
        let (mut conn, mut d, _) = session(Settings::default());
        d.run(&mut conn, b"AUTH PLAIN\r\n");
        assert_eq!(d.run(&mut conn, b"*\r\n"), "-ERR AUTH cancelled\r\n");
        assert_eq!(d.run(&mut conn, b"NOOP\r\n").get(..4), Some("-ERR"));
        d.run(&mut conn, b"AUTH PLAIN\r\n");
        assert!(d
            .run(&mut conn, b"=AAA\r\n")
            .starts_with("-ERR [AUTH] AUTH response is not valid base64"));
        assert!(d
            .run(&mut conn, b"AUTH PLAIN AG!!\r\n")
            .starts_with("-ERR [AUTH] AUTH initial response is not valid base64"));
        d.run(&mut conn, b"AUTH PLAIN\r\n");
        let long = "A".repeat(9000) + "\r\n";
        assert!(d
            .run(&mut conn, long.as_bytes())
            .starts_with("-ERR [AUTH] AUTH response too long"));
        // Back to the command-line limit.
        let long = "NOOP ".to_string() + &"x".repeat(300) + "\r\n";
        assert!(d
            .run(&mut conn, long.as_bytes())
            .starts_with("-ERR Line too long"));
        // A response longer than a command line is fine inside AUTH.
        d.run(&mut conn, b"AUTH PLAIN\r\n");
        let big = b64(&[b"\0mrose\0".as_slice(), &[b'x'; 250]].concat());
        assert!(big.len() > 255);
        assert!(d
            .run(&mut conn, format!("{big}\r\n").as_bytes())
            .starts_with("-ERR [AUTH] Authentication failed"));
    }

    #[test]
    fn bare_auth_lists_usable_mechanisms() {
        let (mut conn, mut d, _) = session(Settings::default());
        assert_eq!(
            d.run(&mut conn, b"AUTH\r\n"),
            "+OK SASL mechanisms follow\r\nSCRAM-SHA-256\r\nPLAIN\r\nLOGIN\r\n.\r\n"
        );
        let (mut conn, mut d, _) = session(tls_settings());
        assert_eq!(
            d.run(&mut conn, b"AUTH\r\n"),
            "+OK SASL mechanisms follow\r\nSCRAM-SHA-256\r\n.\r\n"
        );
        assert!(d
            .run(&mut conn, format!("AUTH PLAIN {}\r\n", b64(b"\0mrose\0secret")).as_bytes())
            .starts_with("-ERR [AUTH] Plaintext authentication is not allowed on an unencrypted connection; use STLS"));
        assert!(d
            .run(&mut conn, b"AUTH GSSAPI\r\n")
            .starts_with("-ERR Unsupported SASL mechanism"));
    }

    #[test]
    fn utf8_user_names_are_saslprepped() {
        let (mut conn, mut d, _) = session(Settings::default());
        assert!(d.run(&mut conn, b"CAPA\r\n").contains("\r\nUTF8 USER\r\n"));
        assert_eq!(d.run(&mut conn, b"UTF8\r\n"), "+OK UTF-8 enabled\r\n");
        // U+00AD (soft hyphen) maps to nothing: "mro\u{AD}se" is "mrose".
        let out = d.run(&mut conn, "USER mro\u{AD}se\r\nPASS secret\r\n".as_bytes());
        assert!(out.contains("+OK Logged in"), "{out}");
        let (mut conn, mut d, _) = session(Settings::default());
        assert!(d
            .run(&mut conn, "USER a\u{7}b\r\n".as_bytes())
            .starts_with("-ERR"));
    }

    #[test]
    fn transcript_redacts_sasl_payloads() {
        let (mut conn, _, _) = session(Settings {
            transcript: true,
            ..Settings::default()
        });
        conn.receive(b"AUTH PLAIN AG1yb3NlAHNlY3JldA==\r\nAUTH LOGIN\r\nbXJvc2U=\r\n*\r\n");
        let mut seen = Vec::new();
        for _ in 0..20 {
            match conn.next() {
                Event::Received(l) => seen.push(String::from_utf8(l).unwrap()),
                Event::Command(_) => {}
                Event::Act(_) => conn.complete(Outcome::AuthRejected),
                Event::NeedInput | Event::Close => break,
                Event::Send(_) => {}
            }
        }
        assert_eq!(seen, ["AUTH PLAIN ***", "AUTH LOGIN", "***", "*"]);
    }

    #[test]
    fn timeouts_follow_the_state() {
        let (conn, _, _) = session(Settings::default());
        assert_eq!(conn.idle_timeout(), Duration::from_secs(120));
        let (conn, _) = logged_in();
        assert_eq!(conn.idle_timeout(), Duration::from_secs(600));
    }

    #[test]
    fn summary_lists_undeleted_messages_and_checks_numbers_like_list() {
        let (mut conn, mut d) = logged_in();
        assert_eq!(
            d.run(&mut conn, b"SUMMARY\r\n"),
            "+OK 2 messages: number, octets, date, From, Subject, problems\r\n1 summary\r\n2 summary\r\n.\r\n"
        );
        d.run(&mut conn, b"DELE 1\r\n");
        assert_eq!(
            d.run(&mut conn, b"SUMMARY\r\n"),
            "+OK 1 message: number, octets, date, From, Subject, problems\r\n2 summary\r\n.\r\n"
        );
        assert_eq!(
            d.run(&mut conn, b"SUMMARY 1\r\n"),
            "-ERR Message 1 is already deleted\r\n"
        );
        assert_eq!(
            d.run(&mut conn, b"SUMMARY 3\r\n"),
            "-ERR No such message: 3 (there are 2 messages, 1 to 2)\r\n"
        );
        assert_eq!(
            d.run(&mut conn, b"SUMMARY 2\r\n"),
            "+OK 1 message: number, octets, date, From, Subject, problems\r\n2 summary\r\n.\r\n"
        );
        assert!(d
            .run(&mut conn, b"SUMMARY x\r\n")
            .starts_with("-ERR Invalid message number"));
        d.vanished = Some(1);
        assert_eq!(
            d.run(&mut conn, b"SUMMARY\r\n"),
            "-ERR [SYS/TEMP] The summary cannot be made right now\r\n"
        );
        // Nothing about SUMMARY touches what QUIT commits.
        d.run(&mut conn, b"QUIT\r\n");
        assert_eq!(d.commits, vec![(vec![0], vec![])]);
    }

    #[test]
    fn summary_is_only_valid_after_login_and_listed_by_help() {
        let (mut conn, mut d, _) = session(Settings::default());
        assert!(d
            .run(&mut conn, b"SUMMARY\r\n")
            .starts_with("-ERR SUMMARY is only valid after login"));
        let (mut conn, mut d) = logged_in();
        let help = d.run(&mut conn, b"HELP\r\n");
        assert!(help.contains("\r\nSUMMARY [msg] "), "{help}");
    }
}
