//! The LMTP session state machine (RFC 2033; RFC 5321 §§3–4 with LHLO in
//! place of EHLO, RFC 2034 enhanced status codes, RFC 2920 pipelining).
//!
//! ```text
//!   Greeting ──LHLO──> Ready ──MAIL──> Mail ──RCPT (accepted)──> Rcpt ──DATA──> Data
//!                        ^  ^            │                        │  RCPT       │
//!                        │  └── RSET, LHLO (any state after Greeting) ┘          │
//!                        └──── one reply per accepted recipient <── (Deliver) <──┘
//!   QUIT from any state: 221, then Closed.
//! ```
//!
//! Bytes go in with [`Conn::receive`]; [`Conn::next`] yields what to do:
//! bytes to send, an [`Action`] for the driver to perform (check a
//! recipient, deliver a message), a request for more input, or the end of
//! the session. The driver reports each action's result with
//! [`Conn::complete`]. Commands are framed by [`LineReader`]; DATA bytes
//! bypass it and go through [`Unstuffer`], and whatever follows the final
//! `.` goes back to command framing, so a whole pipelined transaction can
//! arrive in one read. The core never touches a socket, a file or a clock;
//! the idle timeout is data it hands to the driver.
//!
//! RFC 2033 §4.2: after the final `.` there is one reply per accepted
//! recipient, in RCPT order, never one for the whole message.

use std::collections::VecDeque;
use std::time::Duration;

use super::command::{self, Command, ParseError};
use crate::dot::Unstuffer;
use crate::line::{LineEvent, LineReader};

/// Per-connection policy and limits. Each limit says why it exists.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The name the greeting and the LHLO reply give for this server.
    pub hostname: String,
    /// The largest message accepted, in octets after unstuffing; advertised
    /// as RFC 1870 SIZE so that a client can refuse early. The store must
    /// not fill its disk with one message.
    pub max_message_octets: u64,
    /// Recipients accepted per transaction (RFC 5321 §4.5.3.1.8 requires
    /// at least 100): bounds the work one DATA can cause.
    pub max_recipients: usize,
    /// Unknown, malformed or out-of-sequence commands allowed before the
    /// connection is closed: a confused client should not loop forever.
    pub max_bad_commands: u32,
    /// RFC 5321 §4.5.3.1.4: a command line is at most 512 octets with its
    /// CRLF.
    pub max_line_octets: usize,
    /// How long the driver waits for input before closing (RFC 5321
    /// §4.5.3.2 suggests 5 minutes for commands).
    pub idle_timeout: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            hostname: "localhost".into(),
            // Postfix's default message_size_limit.
            max_message_octets: 10_240_000,
            max_recipients: 100,
            max_bad_commands: 20,
            max_line_octets: 512,
            idle_timeout: Duration::from_secs(300),
        }
    }
}

/// An effect the driver performs, then reports with [`Conn::complete`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Is this a local user? Report [`Outcome::Recipient`].
    CheckRecipient {
        /// The forward path as the client gave it, without brackets.
        address: String,
    },
    /// Deliver the message to these recipients, durably, before reporting
    /// [`Outcome::Delivered`] with one result per recipient, same order.
    Deliver {
        /// The reverse path from MAIL FROM; empty for the null path.
        return_path: String,
        /// Canonical user names from [`RcptResult::Accepted`], in RCPT order.
        recipients: Vec<String>,
        /// The forward paths as the client wrote them, same order as
        /// `recipients`: what a `Delivered-To:` header records.
        addresses: Vec<String>,
        /// The unstuffed message exactly as received (line endings kept).
        message: Vec<u8>,
    },
}

/// The answer to [`Action::CheckRecipient`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RcptResult {
    /// A local user; `user` is the canonical name to deliver to.
    Accepted {
        /// The user name as the store knows it.
        user: String,
    },
    /// No such user.
    Unknown,
    /// The user's mailbox is full.
    OverQuota,
    /// The user database could not answer; the client should retry.
    TemporaryFailure,
}

/// The result of delivering to one recipient.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryResult {
    /// Written durably.
    Delivered,
    /// The mailbox is full.
    OverQuota,
    /// May succeed later.
    TemporaryFailure,
    /// Will not succeed by retrying.
    PermanentFailure,
}

/// The result of an [`Action`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The answer to [`Action::CheckRecipient`].
    Recipient(RcptResult),
    /// The answer to [`Action::Deliver`]: one result per recipient, same
    /// order. A missing result counts as a temporary failure.
    Delivered(Vec<DeliveryResult>),
}

/// What the driver should do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Write these bytes (one or more whole replies).
    Send(Vec<u8>),
    /// Perform this action, then call [`Conn::complete`].
    Act(Action),
    /// Flush what was sent and read more input.
    NeedInput,
    /// Flush what was sent and close the connection.
    Close,
}

/// One accepted recipient.
#[derive(Debug)]
struct Recipient {
    /// As the client wrote it, for the replies.
    address: String,
    /// As the store knows it, for delivery.
    user: String,
}

/// A mail transaction: MAIL FROM and the recipients accepted so far.
#[derive(Debug)]
struct Transaction {
    return_path: String,
    recipients: Vec<Recipient>,
}

/// DATA in progress.
#[derive(Debug)]
struct DataTransfer {
    transaction: Transaction,
    unstuffer: Unstuffer,
    /// Raw client bytes not yet fed to the unstuffer.
    input: Vec<u8>,
    message: Vec<u8>,
    /// The message passed the size limit: the rest is read and dropped.
    too_big: bool,
    /// The server has no room to hold the message now: the rest is read
    /// and dropped, and the client is told to try again later.
    no_room: bool,
}

#[derive(Debug)]
enum State {
    /// Before LHLO.
    Greeting,
    /// No transaction.
    Ready,
    /// After MAIL; no recipient accepted yet.
    Mail(Transaction),
    /// At least one recipient accepted.
    Rcpt(Transaction),
    /// Reading the message.
    Data(DataTransfer),
    /// Waiting for [`Outcome::Delivered`].
    Delivering(Transaction),
    /// After QUIT or too many errors.
    Closed,
}

/// One LMTP session's protocol state.
#[derive(Debug)]
pub struct Conn {
    settings: Settings,
    reader: LineReader,
    state: State,
    queue: VecDeque<Event>,
    /// The recipient being checked, while [`Action::CheckRecipient`] is out.
    checking: Option<String>,
    bad_commands: u32,
}

impl Conn {
    /// A new session; its greeting is the first event.
    pub fn new(settings: Settings) -> Self {
        let greeting = format!("{} LMTP mailbag ready", settings.hostname);
        let mut conn = Conn {
            reader: LineReader::new(settings.max_line_octets),
            settings,
            state: State::Greeting,
            queue: VecDeque::new(),
            checking: None,
            bad_commands: 0,
        };
        // RFC 2034 §3: the greeting carries no enhanced status code.
        conn.send(reply(220, None, &greeting));
        conn
    }

    /// Feeds bytes read from the client.
    pub fn receive(&mut self, bytes: &[u8]) {
        match &mut self.state {
            State::Data(data) => data.input.extend_from_slice(bytes),
            _ => self.reader.push(bytes),
        }
    }

    /// How long the driver may wait for input.
    pub fn idle_timeout(&self) -> Duration {
        self.settings.idle_timeout
    }

    /// Octets of a message being received that the session holds (its
    /// buffer's capacity), for a server-wide bound on them; 0 outside DATA.
    pub fn message_octets(&self) -> usize {
        match &self.state {
            State::Data(data) => data.message.capacity(),
            _ => 0,
        }
    }

    /// The server cannot hold the message being received: the rest of it
    /// is read and dropped, and each recipient is answered `452 4.3.1`
    /// (a temporary failure: the client keeps the message and retries)
    /// after the final dot. Does nothing outside DATA.
    pub fn refuse_message(&mut self) {
        if let State::Data(data) = &mut self.state {
            data.no_room = true;
            data.message = Vec::new();
        }
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
            match &self.state {
                State::Closed => return Event::Close,
                // The driver must complete the outstanding action first.
                State::Delivering(_) => return Event::NeedInput,
                _ if self.checking.is_some() => return Event::NeedInput,
                State::Data(_) => {
                    if !self.read_data() {
                        return Event::NeedInput;
                    }
                    continue;
                }
                _ => {}
            }
            match self.reader.next_event() {
                None => return Event::NeedInput,
                // LMTP is no telnet: option negotiation gets no answer.
                Some(LineEvent::Telnet(_)) => {}
                Some(LineEvent::TooLong) => {
                    self.bad_command(reply(500, Some("5.5.2"), "Line too long"))
                }
                Some(LineEvent::Line(line)) => self.handle_line(&line),
            }
        }
    }

    /// Reports the result of the last [`Action`].
    pub fn complete(&mut self, outcome: Outcome) {
        if let Some(address) = self.checking.take() {
            let result = match outcome {
                Outcome::Recipient(result) => result,
                // A confused driver: nothing was checked, so nothing is
                // accepted, and the client may retry.
                Outcome::Delivered(_) => RcptResult::TemporaryFailure,
            };
            self.recipient_checked(address, result);
            return;
        }
        if !matches!(self.state, State::Delivering(_)) {
            return;
        }
        let State::Delivering(transaction) = std::mem::replace(&mut self.state, State::Ready)
        else {
            return;
        };
        let results = match outcome {
            Outcome::Delivered(results) => results,
            Outcome::Recipient(_) => Vec::new(),
        };
        let mut out = Vec::new();
        for (i, r) in transaction.recipients.iter().enumerate() {
            let result = results
                .get(i)
                .copied()
                .unwrap_or(DeliveryResult::TemporaryFailure);
            let a = &r.address;
            out.extend(match result {
                DeliveryResult::Delivered => reply(250, Some("2.0.0"), &format!("<{a}> delivered")),
                DeliveryResult::OverQuota => {
                    reply(552, Some("5.2.2"), &format!("<{a}>: mailbox full"))
                }
                DeliveryResult::TemporaryFailure => temporary_failure(a),
                DeliveryResult::PermanentFailure => {
                    reply(554, Some("5.3.0"), &format!("<{a}>: delivery failed"))
                }
            });
        }
        self.send(out);
    }

    fn send(&mut self, bytes: Vec<u8>) {
        self.queue.push_back(Event::Send(bytes));
    }

    fn close_with(&mut self, bytes: Vec<u8>) {
        self.send(bytes);
        self.state = State::Closed;
    }

    /// Answers a bad command, or closes once there were too many.
    fn bad_command(&mut self, bytes: Vec<u8>) {
        self.bad_commands += 1;
        if self.bad_commands >= self.settings.max_bad_commands {
            self.close_with(reply(421, Some("4.7.0"), "Too many errors; closing"));
        } else {
            self.send(bytes);
        }
    }

    fn bad_sequence(&mut self) {
        self.bad_command(reply(503, Some("5.5.1"), "Bad sequence of commands"));
    }

    fn handle_line(&mut self, line: &[u8]) {
        let command = match command::parse(line) {
            Ok(c) => c,
            Err(e) => {
                let bytes = match e {
                    ParseError::Unknown => reply(500, Some("5.5.2"), "Command unrecognized"),
                    ParseError::Syntax => reply(501, Some("5.5.4"), "Syntax error in parameters"),
                    ParseError::BadSender => reply(501, Some("5.1.7"), "Bad sender address syntax"),
                    ParseError::BadRecipient => {
                        reply(501, Some("5.1.3"), "Bad recipient address syntax")
                    }
                    ParseError::UnknownParameter => {
                        reply(555, Some("5.5.4"), "Parameter not recognized")
                    }
                };
                return self.bad_command(bytes);
            }
        };
        match command {
            Command::Helo => {
                self.bad_command(reply(500, Some("5.5.1"), "This is LMTP; use LHLO"));
            }
            Command::Lhlo(_) => {
                // RFC 5321 §4.1.4: a greeting also resets any transaction.
                self.state = State::Ready;
                let max = self.settings.max_message_octets;
                let lines = [
                    self.settings.hostname.clone(),
                    "PIPELINING".into(),
                    "ENHANCEDSTATUSCODES".into(),
                    "8BITMIME".into(),
                    format!("SIZE {max}"),
                ];
                self.send(multiline(250, &lines));
            }
            Command::Noop => self.send(reply(250, Some("2.0.0"), "OK")),
            Command::Vrfy => self.send(reply(
                252,
                Some("2.5.0"),
                "Cannot VRFY user; try RCPT to attempt delivery",
            )),
            Command::Help => self.send(reply(
                214,
                Some("2.0.0"),
                "Commands: LHLO MAIL RCPT DATA RSET NOOP QUIT VRFY HELP",
            )),
            Command::Quit => self.close_with(reply(221, Some("2.0.0"), "Bye")),
            Command::Rset => {
                if !matches!(self.state, State::Greeting) {
                    self.state = State::Ready;
                }
                self.send(reply(250, Some("2.0.0"), "OK"));
            }
            Command::Mail {
                reverse_path, size, ..
            } => match self.state {
                State::Ready => {
                    if size.is_some_and(|n| n > self.settings.max_message_octets) {
                        // RFC 1870 §6.1: refuse early when the declared size
                        // is over the limit.
                        self.send(size_exceeded());
                    } else {
                        self.state = State::Mail(Transaction {
                            return_path: reverse_path,
                            recipients: Vec::new(),
                        });
                        self.send(reply(250, Some("2.1.0"), "Sender OK"));
                    }
                }
                State::Mail(_) | State::Rcpt(_) => {
                    self.bad_command(reply(503, Some("5.5.1"), "Sender already specified"))
                }
                _ => self.bad_sequence(),
            },
            Command::Rcpt { forward_path } => match &self.state {
                State::Mail(t) | State::Rcpt(t) => {
                    if t.recipients.len() >= self.settings.max_recipients {
                        // RFC 5321 §4.5.3.1.10: 452, so that the client sends
                        // the rest in another transaction.
                        self.send(reply(452, Some("4.5.3"), "Too many recipients"));
                    } else {
                        self.checking = Some(forward_path.clone());
                        self.queue.push_back(Event::Act(Action::CheckRecipient {
                            address: forward_path,
                        }));
                    }
                }
                _ => self.bad_sequence(),
            },
            Command::Data => match std::mem::replace(&mut self.state, State::Closed) {
                State::Rcpt(transaction) => {
                    // DATA bytes bypass line framing: telnet and editing rules
                    // must not touch a message.
                    let input = self.reader.take_buffered();
                    self.state = State::Data(DataTransfer {
                        transaction,
                        unstuffer: Unstuffer::new(),
                        input,
                        message: Vec::new(),
                        too_big: false,
                        no_room: false,
                    });
                    self.send(reply(354, None, "Start mail input; end with <CRLF>.<CRLF>"));
                }
                State::Mail(t) => {
                    self.state = State::Mail(t);
                    self.bad_command(reply(503, Some("5.5.1"), "No valid recipients"));
                }
                other => {
                    self.state = other;
                    self.bad_sequence();
                }
            },
        }
    }

    fn recipient_checked(&mut self, address: String, result: RcptResult) {
        let a = &address;
        let bytes = match result {
            RcptResult::Accepted { user } => {
                let transaction = match std::mem::replace(&mut self.state, State::Closed) {
                    State::Mail(t) | State::Rcpt(t) => Some(t),
                    other => {
                        self.state = other;
                        None
                    }
                };
                if let Some(mut t) = transaction {
                    t.recipients.push(Recipient {
                        address: address.clone(),
                        user,
                    });
                    self.state = State::Rcpt(t);
                }
                reply(250, Some("2.1.5"), "OK")
            }
            RcptResult::Unknown => reply(550, Some("5.1.1"), &format!("<{a}>: no such user here")),
            RcptResult::OverQuota => reply(552, Some("5.2.2"), &format!("<{a}>: mailbox full")),
            RcptResult::TemporaryFailure => temporary_failure(a),
        };
        self.send(bytes);
    }

    /// Feeds buffered DATA bytes to the unstuffer. Returns false when more
    /// input is needed.
    fn read_data(&mut self) -> bool {
        let State::Data(data) = &mut self.state else {
            return true;
        };
        if data.input.is_empty() {
            return false;
        }
        let (used, done) = data.unstuffer.feed(&data.input, &mut data.message);
        let limit = self.settings.max_message_octets;
        if data.too_big || data.message.len() as u64 > limit {
            // Read to the end, keeping nothing: the reply comes after the
            // final dot (RFC 1870 §6.3).
            data.too_big = true;
            data.message = Vec::new();
        }
        if data.no_room {
            data.message = Vec::new();
        }
        if !done {
            data.input.clear();
            return false;
        }
        let rest = data.input.split_off(used);
        let State::Data(data) = std::mem::replace(&mut self.state, State::Ready) else {
            return true;
        };
        // Commands pipelined after the final dot.
        self.reader.push(&rest);
        let t = data.transaction;
        if data.too_big {
            let one = size_exceeded();
            let all = one.repeat(t.recipients.len());
            self.send(all);
        } else if data.no_room {
            let one = no_room();
            let all = one.repeat(t.recipients.len());
            self.send(all);
        } else {
            let action = Action::Deliver {
                return_path: t.return_path.clone(),
                recipients: t.recipients.iter().map(|r| r.user.clone()).collect(),
                addresses: t.recipients.iter().map(|r| r.address.clone()).collect(),
                message: data.message,
            };
            self.state = State::Delivering(t);
            self.queue.push_back(Event::Act(action));
        }
        true
    }
}

fn no_room() -> Vec<u8> {
    reply(
        452,
        Some("4.3.1"),
        "Insufficient system storage for the message now; try again later",
    )
}

fn size_exceeded() -> Vec<u8> {
    reply(
        552,
        Some("5.3.4"),
        "Message size exceeds fixed maximum message size",
    )
}

fn temporary_failure(address: &str) -> Vec<u8> {
    reply(
        451,
        Some("4.3.0"),
        &format!("<{address}>: temporary failure, try again later"),
    )
}

/// `code [enhanced] text\r\n`. The text loses control characters, so that
/// no reply can carry a stray CR or LF from client input.
fn reply(code: u16, enhanced: Option<&str>, text: &str) -> Vec<u8> {
    let text = printable(text);
    match enhanced {
        Some(e) => format!("{code} {e} {text}\r\n"),
        None => format!("{code} {text}\r\n"),
    }
    .into_bytes()
}

/// RFC 5321 §4.2.1: `code-text` on every line but the last, `code text` on
/// the last.
fn multiline(code: u16, lines: &[String]) -> Vec<u8> {
    let mut out = String::new();
    for (i, line) in lines.iter().enumerate() {
        let sep = if i + 1 == lines.len() { ' ' } else { '-' };
        out.push_str(&format!("{code}{sep}{}\r\n", printable(line)));
    }
    out.into_bytes()
}

fn printable(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A delivery as the driver saw it: return path, users, message.
    type Delivery = (String, Vec<String>, Vec<u8>);

    /// A scripted driver. Local users are alice, bob, carol (whose delivery
    /// finds the mailbox full), dave (delivery fails temporarily) and erin
    /// (delivery fails for good), all `@example.org`; `full@` is over quota
    /// at RCPT, `busy@` fails temporarily at RCPT, anyone else is unknown.
    #[derive(Default)]
    struct Driver {
        out: Vec<u8>,
        deliveries: Vec<Delivery>,
        closed: bool,
    }

    impl Driver {
        fn perform(&mut self, action: Action) -> Outcome {
            match action {
                Action::CheckRecipient { address } => {
                    let address = address.to_ascii_lowercase();
                    let result = match address.split_once('@') {
                        Some((
                            user @ ("alice" | "bob" | "carol" | "dave" | "erin"),
                            "example.org",
                        )) => RcptResult::Accepted { user: user.into() },
                        Some(("full", _)) => RcptResult::OverQuota,
                        Some(("busy", _)) => RcptResult::TemporaryFailure,
                        _ => RcptResult::Unknown,
                    };
                    Outcome::Recipient(result)
                }
                Action::Deliver {
                    return_path,
                    recipients,
                    message,
                    ..
                } => {
                    let results = recipients
                        .iter()
                        .map(|user| match user.as_str() {
                            "carol" => DeliveryResult::OverQuota,
                            "dave" => DeliveryResult::TemporaryFailure,
                            "erin" => DeliveryResult::PermanentFailure,
                            _ => DeliveryResult::Delivered,
                        })
                        .collect();
                    self.deliveries.push((return_path, recipients, message));
                    Outcome::Delivered(results)
                }
            }
        }

        /// Feeds `input` as one read, then drains events as a driver does.
        fn run(&mut self, conn: &mut Conn, input: &[u8]) {
            conn.receive(input);
            loop {
                match conn.next() {
                    Event::Send(b) => self.out.extend_from_slice(&b),
                    Event::Act(a) => {
                        let outcome = self.perform(a);
                        conn.complete(outcome);
                    }
                    Event::NeedInput => break,
                    Event::Close => {
                        self.closed = true;
                        break;
                    }
                }
            }
        }
    }

    fn settings() -> Settings {
        Settings {
            hostname: "mx.example.org".into(),
            max_message_octets: 1000,
            ..Settings::default()
        }
    }

    /// Runs `input` in reads of `size` octets; returns what was sent, the
    /// deliveries, and whether the session closed.
    fn run_chunked(settings: Settings, input: &[u8], size: usize) -> (String, Vec<Delivery>, bool) {
        let mut conn = Conn::new(settings);
        let mut d = Driver::default();
        d.run(&mut conn, b"");
        for chunk in input.chunks(size.min(input.len().max(1))) {
            if d.closed {
                break;
            }
            d.run(&mut conn, chunk);
        }
        (
            String::from_utf8_lossy(&d.out).into_owned(),
            d.deliveries,
            d.closed,
        )
    }

    fn chunk_sizes() -> impl Iterator<Item = usize> {
        (1..=64).chain([100, 513, 4096, usize::MAX])
    }

    const GREETING: &str = "220 mx.example.org LMTP mailbag ready\r\n";
    const LHLO_REPLY: &str = "250-mx.example.org\r\n250-PIPELINING\r\n250-ENHANCEDSTATUSCODES\r\n\
                              250-8BITMIME\r\n250 SIZE 1000\r\n";
    const SENDER_OK: &str = "250 2.1.0 Sender OK\r\n";
    const RCPT_OK: &str = "250 2.1.5 OK\r\n";
    const GO_AHEAD: &str = "354 Start mail input; end with <CRLF>.<CRLF>\r\n";
    const BYE: &str = "221 2.0.0 Bye\r\n";
    const BAD_SEQUENCE: &str = "503 5.5.1 Bad sequence of commands\r\n";
    const TOO_BIG: &str = "552 5.3.4 Message size exceeds fixed maximum message size\r\n";

    fn delivery(from: &str, to: &[&str], message: &[u8]) -> Delivery {
        (
            from.into(),
            to.iter().map(|s| s.to_string()).collect(),
            message.to_vec(),
        )
    }

    fn bytes(parts: &[&[u8]]) -> Vec<u8> {
        parts.concat()
    }

    struct Case {
        name: &'static str,
        settings: Settings,
        input: Vec<u8>,
        /// Replies after the greeting.
        output: String,
        deliveries: Vec<Delivery>,
        closed: bool,
    }

    #[test]
    fn scripts_give_the_same_replies_at_every_chunk_size() {
        let body_1000 = [b'x'; 998].to_vec();
        let body_1001 = [b'x'; 999].to_vec();
        let long_line = |n: usize| {
            let mut v = b"NOOP ".to_vec();
            v.resize(n, b'a');
            v
        };
        let cases = vec![
            Case {
                name: "two recipients, one unknown",
                settings: settings(),
                input: b"LHLO client.example\r\n\
                         MAIL FROM:<sender@remote.example>\r\n\
                         RCPT TO:<alice@example.org>\r\n\
                         RCPT TO:<nobody@example.org>\r\n\
                         DATA\r\n\
                         Subject: hi\r\n\r\nHello\r\n.\r\n\
                         QUIT\r\n"
                    .to_vec(),
                output: [
                    LHLO_REPLY,
                    SENDER_OK,
                    RCPT_OK,
                    "550 5.1.1 <nobody@example.org>: no such user here\r\n",
                    GO_AHEAD,
                    "250 2.0.0 <alice@example.org> delivered\r\n",
                    BYE,
                ]
                .concat(),
                deliveries: vec![delivery(
                    "sender@remote.example",
                    &["alice"],
                    b"Subject: hi\r\n\r\nHello\r\n",
                )],
                closed: true,
            },
            Case {
                name: "one reply per accepted recipient, in RCPT order",
                settings: settings(),
                input: b"lhlo c\r\nmail from: <>\r\n\
                         rcpt to:<Alice@Example.org>\r\nrcpt to:<full@example.org>\r\n\
                         rcpt to:<carol@example.org>\r\nrcpt to:<busy@example.org>\r\n\
                         rcpt to:<dave@example.org>\r\nrcpt to:<@relay:erin@example.org>\r\n\
                         data\r\nbody\r\n.\r\nquit\r\n"
                    .to_vec(),
                output: [
                    LHLO_REPLY,
                    SENDER_OK,
                    RCPT_OK,
                    "552 5.2.2 <full@example.org>: mailbox full\r\n",
                    RCPT_OK,
                    "451 4.3.0 <busy@example.org>: temporary failure, try again later\r\n",
                    RCPT_OK,
                    RCPT_OK,
                    GO_AHEAD,
                    "250 2.0.0 <Alice@Example.org> delivered\r\n",
                    "552 5.2.2 <carol@example.org>: mailbox full\r\n",
                    "451 4.3.0 <dave@example.org>: temporary failure, try again later\r\n",
                    "554 5.3.0 <erin@example.org>: delivery failed\r\n",
                    BYE,
                ]
                .concat(),
                deliveries: vec![delivery("", &["alice", "carol", "dave", "erin"], b"body\r\n")],
                closed: true,
            },
            Case {
                name: "dot-stuffed lines are unstuffed, and DATA text is never a command",
                settings: settings(),
                input: b"LHLO c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<bob@example.org>\r\nDATA\r\n\
                         ..\r\n...x\r\n.y\r\na.\r\nQUIT\r\n. \r\n.\r\nNOOP\r\n"
                    .to_vec(),
                output: [
                    LHLO_REPLY,
                    SENDER_OK,
                    RCPT_OK,
                    GO_AHEAD,
                    "250 2.0.0 <bob@example.org> delivered\r\n",
                    "250 2.0.0 OK\r\n",
                ]
                .concat(),
                deliveries: vec![delivery("a@b", &["bob"], b".\r\n..x\r\ny\r\na.\r\nQUIT\r\n \r\n")],
                closed: false,
            },
            Case {
                name: "bare LF line endings are kept as sent",
                settings: settings(),
                input: b"LHLO c\nMAIL FROM:<a@b>\nRCPT TO:<bob@example.org>\nDATA\nl1\n..l2\n.\nQUIT\n"
                    .to_vec(),
                output: [
                    LHLO_REPLY,
                    SENDER_OK,
                    RCPT_OK,
                    GO_AHEAD,
                    "250 2.0.0 <bob@example.org> delivered\r\n",
                    BYE,
                ]
                .concat(),
                deliveries: vec![delivery("a@b", &["bob"], b"l1\n.l2\n")],
                closed: true,
            },
            Case {
                name: "NUL, 8-bit and telnet-looking bytes in the body are preserved",
                settings: settings(),
                input: b"LHLO c\r\nMAIL FROM:<a@b> BODY=8BITMIME\r\nRCPT TO:<bob@example.org>\r\nDATA\r\n\
                         \0\xff\xfb\x01\x80\x08\x7f\r\n\xff\xff\xfa\r\xff\xf0\r\n\r\0\r\n.\r\nQUIT\r\n"
                    .to_vec(),
                output: [
                    LHLO_REPLY,
                    SENDER_OK,
                    RCPT_OK,
                    GO_AHEAD,
                    "250 2.0.0 <bob@example.org> delivered\r\n",
                    BYE,
                ]
                .concat(),
                deliveries: vec![delivery(
                    "a@b",
                    &["bob"],
                    b"\0\xff\xfb\x01\x80\x08\x7f\r\n\xff\xff\xfa\r\xff\xf0\r\n\r\0\r\n",
                )],
                closed: true,
            },
            Case {
                name: "SIZE= over the limit is refused at MAIL",
                settings: settings(),
                input: b"LHLO c\r\nMAIL FROM:<a@b> SIZE=1001\r\nRCPT TO:<bob@example.org>\r\n\
                         MAIL FROM:<a@b> SIZE=1000\r\nRCPT TO:<bob@example.org>\r\n"
                    .to_vec(),
                output: [LHLO_REPLY, TOO_BIG, BAD_SEQUENCE, SENDER_OK, RCPT_OK].concat(),
                deliveries: vec![],
                closed: false,
            },
            Case {
                name: "data over the limit is read to its end and refused per recipient",
                settings: settings(),
                input: bytes(&[
                    b"LHLO c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<alice@example.org>\r\n\
                      RCPT TO:<bob@example.org>\r\nDATA\r\n",
                    &body_1001,
                    b"\r\n.\r\nMAIL FROM:<a@b>\r\nRCPT TO:<bob@example.org>\r\nDATA\r\n",
                    &body_1000,
                    b"\r\n.\r\nQUIT\r\n",
                ]),
                output: [
                    LHLO_REPLY,
                    SENDER_OK,
                    RCPT_OK,
                    RCPT_OK,
                    GO_AHEAD,
                    TOO_BIG,
                    TOO_BIG,
                    SENDER_OK,
                    RCPT_OK,
                    GO_AHEAD,
                    "250 2.0.0 <bob@example.org> delivered\r\n",
                    BYE,
                ]
                .concat(),
                deliveries: vec![delivery(
                    "a@b",
                    &["bob"],
                    &bytes(&[&body_1000, b"\r\n"]),
                )],
                closed: true,
            },
            Case {
                name: "bad sequences",
                settings: settings(),
                input: b"MAIL FROM:<a@b>\r\nLHLO c\r\nRCPT TO:<bob@example.org>\r\nDATA\r\n\
                         MAIL FROM:<a@b>\r\nDATA\r\nMAIL FROM:<c@d>\r\n\
                         RCPT TO:<nobody@x>\r\nDATA\r\nRCPT TO:<bob@example.org>\r\n\
                         MAIL FROM:<c@d>\r\n"
                    .to_vec(),
                output: [
                    BAD_SEQUENCE,
                    LHLO_REPLY,
                    BAD_SEQUENCE,
                    BAD_SEQUENCE,
                    SENDER_OK,
                    "503 5.5.1 No valid recipients\r\n",
                    "503 5.5.1 Sender already specified\r\n",
                    "550 5.1.1 <nobody@x>: no such user here\r\n",
                    "503 5.5.1 No valid recipients\r\n",
                    RCPT_OK,
                    "503 5.5.1 Sender already specified\r\n",
                ]
                .concat(),
                deliveries: vec![],
                closed: false,
            },
            Case {
                name: "HELO and EHLO are refused",
                settings: settings(),
                input: b"HELO c\r\nEHLO c\r\nMAIL FROM:<a@b>\r\nLHLO c\r\n".to_vec(),
                output: [
                    "500 5.5.1 This is LMTP; use LHLO\r\n",
                    "500 5.5.1 This is LMTP; use LHLO\r\n",
                    BAD_SEQUENCE,
                    LHLO_REPLY,
                ]
                .concat(),
                deliveries: vec![],
                closed: false,
            },
            Case {
                name: "512 octets with CRLF fit; longer lines are answered once, tail unread",
                settings: settings(),
                input: bytes(&[
                    &long_line(510),
                    b"\r\n",
                    &long_line(511),
                    b"\r\n",
                    &long_line(5000),
                    b"QUIT\r\nNOOP\r\n",
                ]),
                output: [
                    "250 2.0.0 OK\r\n",
                    "500 5.5.2 Line too long\r\n",
                    "500 5.5.2 Line too long\r\n",
                    "250 2.0.0 OK\r\n",
                ]
                .concat(),
                deliveries: vec![],
                closed: false,
            },
            Case {
                name: "RSET mid-transaction forgets sender and recipients",
                settings: settings(),
                input: b"LHLO c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<bob@example.org>\r\nRSET\r\n\
                         DATA\r\nRCPT TO:<bob@example.org>\r\nMAIL FROM:<c@d>\r\n\
                         RCPT TO:<alice@example.org>\r\nDATA\r\nx\r\n.\r\n"
                    .to_vec(),
                output: [
                    LHLO_REPLY,
                    SENDER_OK,
                    RCPT_OK,
                    "250 2.0.0 OK\r\n",
                    BAD_SEQUENCE,
                    BAD_SEQUENCE,
                    SENDER_OK,
                    RCPT_OK,
                    GO_AHEAD,
                    "250 2.0.0 <alice@example.org> delivered\r\n",
                ]
                .concat(),
                deliveries: vec![delivery("c@d", &["alice"], b"x\r\n")],
                closed: false,
            },
            Case {
                name: "LHLO again resets the transaction",
                settings: settings(),
                input: b"LHLO c\r\nMAIL FROM:<a@b>\r\nLHLO c\r\nRCPT TO:<bob@example.org>\r\n".to_vec(),
                output: [LHLO_REPLY, SENDER_OK, LHLO_REPLY, BAD_SEQUENCE].concat(),
                deliveries: vec![],
                closed: false,
            },
            Case {
                name: "recipient limit",
                settings: Settings {
                    max_recipients: 2,
                    ..settings()
                },
                input: b"LHLO c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<alice@example.org>\r\n\
                         RCPT TO:<nobody@example.org>\r\nRCPT TO:<bob@example.org>\r\n\
                         RCPT TO:<carol@example.org>\r\nDATA\r\nm\r\n.\r\n"
                    .to_vec(),
                output: [
                    LHLO_REPLY,
                    SENDER_OK,
                    RCPT_OK,
                    "550 5.1.1 <nobody@example.org>: no such user here\r\n",
                    RCPT_OK,
                    "452 4.5.3 Too many recipients\r\n",
                    GO_AHEAD,
                    "250 2.0.0 <alice@example.org> delivered\r\n",
                    "250 2.0.0 <bob@example.org> delivered\r\n",
                ]
                .concat(),
                deliveries: vec![delivery("a@b", &["alice", "bob"], b"m\r\n")],
                closed: false,
            },
            Case {
                name: "syntax errors",
                settings: settings(),
                input: b"LHLO\r\nLHLO c\r\nMAIL FROM:<a@b\r\nMAIL FROM:<a\x01@b>\r\n\
                         MAIL FROM:<a@b> SIZE=x\r\nMAIL FROM:<a@b> AUTH=<>\r\n\
                         MAIL FROM:<a@b> XFOO\r\nMAIL FROM:<a@b>\r\nRCPT TO:<>\r\n\
                         RCPT TO:<<bob@example.org>\r\nFOO\r\n\r\n"
                    .to_vec(),
                output: [
                    "501 5.5.4 Syntax error in parameters\r\n",
                    LHLO_REPLY,
                    "501 5.1.7 Bad sender address syntax\r\n",
                    "501 5.1.7 Bad sender address syntax\r\n",
                    "501 5.5.4 Syntax error in parameters\r\n",
                    "501 5.5.4 Syntax error in parameters\r\n",
                    "555 5.5.4 Parameter not recognized\r\n",
                    SENDER_OK,
                    "501 5.1.3 Bad recipient address syntax\r\n",
                    "501 5.1.3 Bad recipient address syntax\r\n",
                    "500 5.5.2 Command unrecognized\r\n",
                    "500 5.5.2 Command unrecognized\r\n",
                ]
                .concat(),
                deliveries: vec![],
                closed: false,
            },
            Case {
                name: "too many bad commands close the session",
                settings: Settings {
                    max_bad_commands: 3,
                    ..settings()
                },
                input: b"FOO\r\nHELO x\r\nNOOP\r\nDATA\r\nNOOP\r\n".to_vec(),
                output: [
                    "500 5.5.2 Command unrecognized\r\n",
                    "500 5.5.1 This is LMTP; use LHLO\r\n",
                    "250 2.0.0 OK\r\n",
                    "421 4.7.0 Too many errors; closing\r\n",
                ]
                .concat(),
                deliveries: vec![],
                closed: true,
            },
            Case {
                name: "NOOP, VRFY, HELP and RSET before LHLO; nothing after QUIT",
                settings: settings(),
                input: b"noop\r\nVRFY alice\r\nHELP\r\nRSET\r\nQUIT\r\nNOOP\r\n".to_vec(),
                output: [
                    "250 2.0.0 OK\r\n",
                    "252 2.5.0 Cannot VRFY user; try RCPT to attempt delivery\r\n",
                    "214 2.0.0 Commands: LHLO MAIL RCPT DATA RSET NOOP QUIT VRFY HELP\r\n",
                    "250 2.0.0 OK\r\n",
                    BYE,
                ]
                .concat(),
                deliveries: vec![],
                closed: true,
            },
            Case {
                name: "an unfinished DATA delivers nothing",
                settings: settings(),
                input: b"LHLO c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<bob@example.org>\r\nDATA\r\nx\r\n.\r"
                    .to_vec(),
                output: [LHLO_REPLY, SENDER_OK, RCPT_OK, GO_AHEAD].concat(),
                deliveries: vec![],
                closed: false,
            },
        ];
        for case in &cases {
            for size in chunk_sizes() {
                let (out, deliveries, closed) =
                    run_chunked(case.settings.clone(), &case.input, size);
                let name = case.name;
                assert_eq!(
                    out,
                    format!("{GREETING}{}", case.output),
                    "{name} at {size}"
                );
                assert_eq!(deliveries, case.deliveries, "{name} at {size}");
                assert_eq!(closed, case.closed, "{name} at {size}");
            }
        }
    }

    #[test]
    fn a_session_step_by_step() {
        let mut conn = Conn::new(settings());
        assert_eq!(conn.next(), Event::Send(GREETING.into()));
        assert_eq!(conn.next(), Event::NeedInput);
        conn.receive(b"LHLO c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<x@y>\r\nRCPT TO:<z@w>\r\n");
        assert_eq!(conn.next(), Event::Send(LHLO_REPLY.into()));
        assert_eq!(conn.next(), Event::Send(SENDER_OK.into()));
        let check = |address: &str| {
            Event::Act(Action::CheckRecipient {
                address: address.into(),
            })
        };
        assert_eq!(conn.next(), check("x@y"));
        // Nothing more happens until the action is complete.
        assert_eq!(conn.next(), Event::NeedInput);
        conn.complete(Outcome::Recipient(RcptResult::Accepted {
            user: "u1".into(),
        }));
        assert_eq!(conn.next(), Event::Send(RCPT_OK.into()));
        assert_eq!(conn.next(), check("z@w"));
        conn.complete(Outcome::Recipient(RcptResult::Accepted {
            user: "u2".into(),
        }));
        assert_eq!(conn.next(), Event::Send(RCPT_OK.into()));
        assert_eq!(conn.next(), Event::NeedInput);
        conn.receive(b"DATA\r\nhead");
        assert_eq!(conn.next(), Event::Send(GO_AHEAD.into()));
        assert_eq!(conn.next(), Event::NeedInput);
        conn.receive(b"er\r\n.\r\nNOOP\r\n");
        assert_eq!(
            conn.next(),
            Event::Act(Action::Deliver {
                return_path: "a@b".into(),
                recipients: vec!["u1".into(), "u2".into()],
                addresses: vec!["x@y".into(), "z@w".into()],
                message: b"header\r\n".to_vec(),
            })
        );
        assert_eq!(conn.next(), Event::NeedInput);
        // Input arriving while delivery is outstanding waits its turn.
        conn.receive(b"QUIT\r\n");
        assert_eq!(conn.next(), Event::NeedInput);
        // A short result list: the missing recipient gets a temporary failure.
        conn.complete(Outcome::Delivered(vec![DeliveryResult::Delivered]));
        assert_eq!(
            conn.next(),
            Event::Send(
                "250 2.0.0 <x@y> delivered\r\n\
                 451 4.3.0 <z@w>: temporary failure, try again later\r\n"
                    .into()
            )
        );
        assert_eq!(conn.next(), Event::Send("250 2.0.0 OK\r\n".into()));
        assert_eq!(conn.next(), Event::Send(BYE.into()));
        assert_eq!(conn.next(), Event::Close);
        assert_eq!(conn.next(), Event::Close);
    }

    #[test]
    fn hostname_cannot_inject_lines_and_timeout_is_data() {
        let conn_settings = Settings {
            hostname: "evil\r\n250 x".into(),
            idle_timeout: Duration::from_secs(42),
            ..Settings::default()
        };
        let mut conn = Conn::new(conn_settings);
        assert_eq!(
            conn.next(),
            Event::Send(b"220 evil??250 x LMTP mailbag ready\r\n".to_vec())
        );
        assert_eq!(conn.idle_timeout(), Duration::from_secs(42));
        assert_eq!(Settings::default().idle_timeout, Duration::from_secs(300));
        assert_eq!(Settings::default().max_recipients, 100);
        assert_eq!(Settings::default().max_bad_commands, 20);
    }

    #[test]
    fn oversized_data_is_not_buffered() {
        let mut conn = Conn::new(settings());
        let mut d = Driver::default();
        d.run(
            &mut conn,
            b"LHLO c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<bob@example.org>\r\nDATA\r\n",
        );
        let line = [b'y'; 999];
        for _ in 0..1000 {
            d.run(&mut conn, &line);
            d.run(&mut conn, b"\r\n");
            let State::Data(data) = &conn.state else {
                panic!("left DATA early");
            };
            assert!(data.message.len() <= 1001);
        }
        d.run(&mut conn, b".\r\n");
        assert!(String::from_utf8_lossy(&d.out).ends_with(TOO_BIG));
        assert!(d.deliveries.is_empty());
    }

    #[test]
    fn a_message_the_server_has_no_room_for_is_dropped_and_retried_later() {
        let mut conn = Conn::new(settings());
        let mut d = Driver::default();
        d.run(
            &mut conn,
            b"LHLO c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<bob@example.org>\r\nRCPT TO:<alice@example.org>\r\nDATA\r\n",
        );
        assert_eq!(conn.message_octets(), 0);
        d.run(&mut conn, b"Subject: x\r\n\r\nfirst part\r\n");
        assert!(conn.message_octets() > 0);
        conn.refuse_message();
        assert_eq!(conn.message_octets(), 0);
        d.out.clear();
        d.run(&mut conn, b"the rest, never kept\r\n");
        assert_eq!(conn.message_octets(), 0);
        d.run(&mut conn, b".\r\n");
        let no_room =
            "452 4.3.1 Insufficient system storage for the message now; try again later\r\n";
        assert_eq!(String::from_utf8_lossy(&d.out), no_room.repeat(2));
        assert!(d.deliveries.is_empty());
        // The session goes on: the next transaction is delivered.
        d.out.clear();
        d.run(
            &mut conn,
            b"MAIL FROM:<a@b>\r\nRCPT TO:<bob@example.org>\r\nDATA\r\nhi\r\n.\r\n",
        );
        assert_eq!(d.deliveries.len(), 1);
        // Outside DATA it does nothing.
        conn.refuse_message();
        d.run(&mut conn, b"QUIT\r\n");
        assert!(String::from_utf8_lossy(&d.out).ends_with(BYE));
    }
}
