//! mailbag-proto: the sans-IO protocol cores of mailbag.
//!
//! Everything here is a pure function of the bytes fed in: no sockets, no
//! files, no clock, no async runtime. The driver in the `mailbag` crate owns
//! all IO and asks these cores what to say and what to do.
//!
//! - [`line`](mod@line): command-line framing (length limit, bare LF, backspace/DEL,
//!   telnet IAC).
//! - [`dot`]: the multi-line body transform of RFC 1939 §3 (LF to CRLF,
//!   dot-stuffing, TOP line counting) and the exact octet count it implies.
//! - [`pop3`]: the POP3 session state machine (RFC 1939, RFC 2449).
//! - [`lmtp`]: the LMTP session state machine for delivery (RFC 2033, RFC 5321).
//! - [`proxy`]: the PROXY protocol header (v1 and v2) from load balancers.
//! - [`sasl`]: SASL mechanisms (PLAIN, LOGIN, CRAM-MD5, SCRAM-SHA-256) as
//!   step machines.
//! - [`secret`]: a wrapper that keeps credentials out of `Debug` output.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod dot;
pub mod line;
pub mod lmtp;
pub mod pop3;
pub mod proxy;
pub mod sasl;
pub mod secret;
