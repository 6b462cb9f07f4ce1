//! mailbag: a POP3 mail server.
//!
//! This crate holds everything that does IO: the tokio driver and
//! listeners (`server`), the mail stores and local delivery (`store`),
//! the password databases (`auth`), the PostgreSQL connections both of
//! those share (`pg`), the administrator's commands (`admin`),
//! configuration (`config`, with `net` for network prefixes) and who the
//! process runs as (`privileges`). The command line is the binary's
//! (`src/cli.rs`). The protocol itself lives in the sans-IO crate
//! `mailbag_proto`.
#![forbid(unsafe_code)]

pub mod admin;
pub mod auth;
pub mod config;
pub mod net;
pub mod pg;
pub mod privileges;
pub mod server;
pub mod store;
