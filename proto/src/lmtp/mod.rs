//! The LMTP protocol core (RFC 2033, on RFC 5321 with RFC 1652, RFC 1870,
//! RFC 2034 and RFC 2920): command parsing and the session state machine
//! that accepts mail for local delivery. No IO.

pub mod command;
pub mod conn;

pub use command::{Body, Command, ParseError};
pub use conn::{Action, Conn, DeliveryResult, Event, Outcome, RcptResult, Settings};
