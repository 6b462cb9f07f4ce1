//! The POP3 protocol core (RFC 1939, RFC 2449): command parsing, response
//! encoding and the session state machine. No IO.

pub mod command;
pub mod conn;
pub mod response;

pub use command::{parse_message_number, Command, Index, MessageNumber, ParseError, Verb};
pub use conn::{Action, Conn, Credential, Event, MessageInfo, Outcome, Settings, StoreFailure};
pub use response::{Code, Farewell};
